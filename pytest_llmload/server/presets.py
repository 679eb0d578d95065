"""Which model to serve: the reference study's presets, local folders, hub ids, and the tiny model.

The presets carry the study's GPU layouts (tensor / pipeline parallelism, quantization, dtype) and the
architecture facts a memory-bandwidth estimate needs (layers, KV heads, head size, weight bits), so
that estimate works without the model hub.

The preset `tiny` is built locally (`tiny.py`) so that vLLM can be exercised without a GPU or a hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .tiny import build_tiny_model, default_cache_dir


@dataclass(frozen=True, slots=True)
class Preset:
    """A model and the GPU layout it is served with; architecture facts for bandwidth estimates."""

    name: str
    model: str  # hub id, or "" for the locally built tiny model
    tensor_parallel: int
    pipeline_parallel: int
    quantization: str | None  # vLLM's --quantization value
    dtype: str | None  # vLLM's --dtype; None lets the device decide (float32 on CPU)
    max_model_len: int
    gpus: str  # the hardware the layout is meant for, e.g. "2x V100 16GB"
    study_table: str | None  # "I".."VII": the reference study's table for this configuration
    params_b: float  # total parameters, billions
    active_params_b: float  # parameters read per token (differs from params_b for mixture-of-experts)
    num_layers: int
    num_kv_heads: int
    head_dim: int
    weight_bits: int  # bits per weight as stored (4 for AWQ, 8 for GPTQ 8-bit, 16 for fp16)
    kv_bits: int = 16  # bits per KV-cache element
    num_experts: int = 0  # mixture-of-experts: experts per layer (0: a dense model)
    experts_per_token: int = 0  # mixture-of-experts: experts each token is routed to


# Architecture facts from each model's config.json (Mistral / Codestral / Mixtral / Llama 3 cards).
_MISTRAL_7B = dict(params_b=7.25, active_params_b=7.25, num_layers=32, num_kv_heads=8, head_dim=128)
_CODESTRAL_22B = dict(params_b=22.2, active_params_b=22.2, num_layers=56, num_kv_heads=8, head_dim=128)
_MIXTRAL_8X7B = dict(params_b=46.7, active_params_b=12.9, num_layers=32, num_kv_heads=8, head_dim=128,
                     num_experts=8, experts_per_token=2)
_MIXTRAL_8X22B = dict(params_b=141.0, active_params_b=39.0, num_layers=56, num_kv_heads=8, head_dim=128,
                      num_experts=8, experts_per_token=2)
_LLAMA3_70B = dict(params_b=70.6, active_params_b=70.6, num_layers=80, num_kv_heads=8, head_dim=128)

# The study's longest prompt is 2193 tokens plus 100 generated; 4096 leaves room and keeps the
# KV cache small enough for the 16 GB V100s.
_STUDY_LEN = 4096


def _preset(name: str, model: str, tp: int, quant: str | None, bits: int, gpus: str, table: str,
            arch: dict[str, Any]) -> Preset:
    # V100 has no bfloat16 and AWQ/GPTQ kernels want float16, so every study preset is float16.
    return Preset(name=name, model=model, tensor_parallel=tp, pipeline_parallel=1, quantization=quant,
                  dtype="float16", max_model_len=_STUDY_LEN, gpus=gpus, study_table=table,
                  weight_bits=bits, **arch)


TINY = Preset(
    name="tiny", model="", tensor_parallel=1, pipeline_parallel=1, quantization=None, dtype=None,
    max_model_len=2048, gpus="none (CPU)", study_table=None, params_b=0.0014, active_params_b=0.0014,
    num_layers=2, num_kv_heads=4, head_dim=32, weight_bits=32, kv_bits=32,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        TINY,
        _preset("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", 2, None, 16, "2x V100 16GB", "I",
                _MISTRAL_7B),
        _preset("codestral-22b-awq", "TechxGenus/Codestral-22B-v0.1-AWQ", 1, "awq", 4, "1x A100 40GB",
                "II", _CODESTRAL_22B),
        _preset("codestral-22b-gptq8", "TechxGenus/Codestral-22B-v0.1-GPTQ-8bit", 2, "gptq", 8,
                "2x V100 16GB", "III", _CODESTRAL_22B),
        _preset("codestral-22b", "mistralai/Codestral-22B-v0.1", 2, None, 16, "2x A100 40GB", "IV",
                _CODESTRAL_22B),
        _preset("mixtral-8x7b-awq", "TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ", 2, "awq", 4,
                "2x A100 40GB", "V", _MIXTRAL_8X7B),
        _preset("mixtral-8x22b-awq", "MaziyarPanahi/Mixtral-8x22B-Instruct-v0.1-AWQ", 4, "awq", 4,
                "4x A100 40GB", "VI", _MIXTRAL_8X22B),
        _preset("llama-3-70b-awq", "casperhansen/llama-3-70b-instruct-awq", 2, "awq", 4,
                "2x A100 40GB", "VII", _LLAMA3_70B),
    )
}
DEFAULT_PRESET = "tiny"


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What to pass to vLLM: a local path or hub id, the name to serve it under, and its preset."""

    model: str
    served_model_name: str
    preset: Preset | None
    is_local_tiny: bool = False


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_name(value: str) -> None:
    """Check a --llm-model value without building anything; ConfigError if it cannot be resolved."""
    value = value.strip()
    if value in PRESETS:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        _from_dir(path)
    elif _looks_like_path(value):
        raise ConfigError(f"model folder {value!r} does not exist")
    elif not _HUB_ID.match(value):
        raise ConfigError(f"unknown model {value!r}: not a preset, a local folder or a hub id (org/name). "
                          f"Presets: {', '.join(PRESETS)}")


def resolve_model(value: str, cache_dir: Path | None = None) -> ModelChoice:
    """Turn a --llm-model value (preset name, local folder or hub id) into a ModelChoice.

    Builds the tiny model on first use. Raises ConfigError for a folder without config.json or a
    bare name that is neither a preset nor a folder.
    """
    value = value.strip()
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    if value in PRESETS:
        return _from_preset(PRESETS[value], cache_dir)
    path = Path(value).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if _looks_like_path(value):
        raise ConfigError(f"model folder {value!r} does not exist")
    if _HUB_ID.match(value):
        return ModelChoice(model=value, served_model_name=value, preset=_preset_for_hub_id(value))
    raise ConfigError(
        f"unknown model {value!r}: not a preset, a local folder or a hub id (org/name). "
        f"Presets: {', '.join(PRESETS)}"
    )


def _from_preset(preset: Preset, cache_dir: Path) -> ModelChoice:
    if preset is TINY:
        path = build_tiny_model(cache_dir)
        return ModelChoice(model=str(path), served_model_name="tiny", preset=preset, is_local_tiny=True)
    return ModelChoice(model=preset.model, served_model_name=preset.model, preset=preset)


def _from_dir(path: Path) -> ModelChoice:
    if not (path / "config.json").is_file():
        raise ConfigError(f"model folder {str(path)!r} has no config.json, so vLLM cannot load it")
    path = path.resolve()
    return ModelChoice(model=str(path), served_model_name=path.name, preset=None)


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value


def _preset_for_hub_id(model: str) -> Preset | None:
    # A hub id that a preset serves gets that preset's layout facts (useful for bandwidth math).
    return next((p for p in PRESETS.values() if p.model == model), None)

"""Presets, model resolution and the tiny local model (built for real; no downloads)."""

from __future__ import annotations

import json
import re
from typing import Any
from importlib import resources
from pathlib import Path

import pytest

from pytest_llmload.errors import ConfigError
from pytest_llmload.observe.physical import facts_from_preset
from pytest_llmload.server import tiny
from pytest_llmload.server.presets import PRESETS, resolve_model
from pytest_llmload.server.tiny import build_tiny_model, verify_model_dir

STUDY = json.loads(resources.files("pytest_llmload").joinpath("data/study-tables.json").read_text())


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_dir(tiny_cache: Path) -> Path:
    return build_tiny_model(tiny_cache)


# ----- presets


@pytest.mark.parametrize("table", STUDY["tables"], ids=lambda t: t["table"])
def test_every_study_table_has_a_matching_preset(table: dict[str, Any]) -> None:
    [preset] = [p for p in PRESETS.values() if p.study_table == table["table"]]
    assert preset.gpus == table["gpus"]
    assert preset.tensor_parallel * preset.pipeline_parallel == int(table["gpus"].split("x")[0])
    expected = {None: (None, 16), "AWQ 4-bit": ("awq", 4), "GPTQ 8-bit": ("gptq", 8)}
    assert (preset.quantization, preset.weight_bits) == expected[table["quantization"]]
    model_words = re.findall(r"[a-z0-9]+", table["model"].lower())
    assert all(word in preset.model.lower().replace("-", "") or word in preset.model.lower()
               for word in model_words)


def test_study_presets_use_float16_because_v100_has_no_bfloat16() -> None:
    assert all(p.dtype == "float16" for p in PRESETS.values() if p.study_table)
    assert {p.study_table for p in PRESETS.values()} == {None, "I", "II", "III", "IV", "V", "VI", "VII"}


def test_bandwidth_facts() -> None:
    mistral = facts_from_preset(PRESETS["mistral-7b"])
    assert mistral.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads, fp16
    assert mistral.params * mistral.weight_bytes == pytest.approx(14.5e9)
    mixtral = facts_from_preset(PRESETS["mixtral-8x7b-awq"])
    assert (mixtral.num_experts, mixtral.experts_per_token) == (8, 2)  # the preset says so, not a guess
    assert mixtral.active_params == pytest.approx(12.9e9)  # a token reads 2 of the 8 experts


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMLOAD_CACHE_DIR", str(tmp_path))
    assert tiny.default_cache_dir() == tmp_path
    monkeypatch.delenv("LLMLOAD_CACHE_DIR")
    assert tiny.default_cache_dir() == Path.home() / ".cache" / "pytest-llmload"


# ----- resolve_model


def test_resolve_tiny_builds_it(tiny_cache: Path, tiny_dir: Path) -> None:
    choice = resolve_model("tiny", tiny_cache)
    assert choice.is_local_tiny and choice.served_model_name == "tiny"
    assert Path(choice.model) == tiny_dir and choice.preset is PRESETS["tiny"]


def test_resolve_preset_gives_its_hub_id(tmp_path: Path) -> None:
    choice = resolve_model("llama-3-70b-awq", tmp_path)
    assert choice.model == choice.served_model_name == PRESETS["llama-3-70b-awq"].model
    assert not choice.is_local_tiny and not any(tmp_path.iterdir())


def test_resolve_local_folder(tiny_dir: Path, tmp_path: Path) -> None:
    choice = resolve_model(str(tiny_dir), tmp_path)
    assert choice.model == str(tiny_dir.resolve()) and choice.served_model_name == tiny_dir.name
    assert choice.preset is None and not choice.is_local_tiny


def test_resolve_folder_without_config_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path)) + ".*config.json"):
        resolve_model(str(tmp_path), tmp_path)


def test_resolve_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("./no/such/model", tmp_path)


def test_resolve_hub_id(tmp_path: Path) -> None:
    choice = resolve_model("org/some-model.v2", tmp_path)
    assert choice.model == "org/some-model.v2" and choice.preset is None
    assert resolve_model(PRESETS["mistral-7b"].model, tmp_path).preset is PRESETS["mistral-7b"]


def test_resolve_unknown_bare_name_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'gpt5'.*tiny.*mistral-7b"):
        resolve_model("gpt5", tmp_path)


# ----- the tiny model


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_tiny_build_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path)
    assert _contents(again) == _contents(tiny_dir)
    assert sorted(_contents(again)) == sorted((*tiny.TINY_FILES, tiny.MANIFEST))


def test_tiny_cache_is_reused(tiny_cache: Path, tiny_dir: Path) -> None:
    before = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_cache) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete", "no-manifest"])
def test_damaged_cache_is_rebuilt(tiny_dir: Path, tmp_path: Path, damage: str) -> None:
    good = _contents(tiny_dir)
    built = build_tiny_model(tmp_path)
    victim = built / ("manifest.json" if damage == "no-manifest" else "model.safetensors")
    if damage == "corrupt":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.unlink()
    assert not verify_model_dir(built)
    assert build_tiny_model(tmp_path) == built
    assert _contents(built) == good
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no staging or damaged leftovers


def test_tiny_tokenizer(tiny_dir: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == tiny.TINY_CONFIG["vocab_size"]
    encoded = tok.encode("The server answers the first request.")
    assert encoded.ids[0] == 1 and len(encoded.ids) > 3  # BOS first, like Llama
    assert tok.decode(encoded.ids) == "The server answers the first request."
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "add_generation_prompt" in config["chat_template"]


def test_tiny_weights_have_the_generation_fixes(tiny_dir: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = st.load_file(str(tiny_dir / "model.safetensors"))
    head, embed = tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]
    assert head.shape == embed.shape == (4096, 128)
    assert not (head == embed).all()  # untied
    assert (head[: len(tiny.SPECIAL_TOKENS)] == 0).all()  # special tokens never win greedily
    assert 0.4 < float(head[4:].std()) < 0.6
    assert len(tensors) == 3 + 9 * tiny.TINY_CONFIG["num_hidden_layers"]

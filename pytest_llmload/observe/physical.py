"""The physical limit: how fast decoding *could* go if memory bandwidth were the only cost.

Decoding is memory-bound: every step reads all the weights the batch needs plus the KV cache of every
sequence in it, and produces one token per sequence. So, for a closed-loop cell of B concurrent
sequences, a prompt of P tokens and G generated tokens:

    L           = P + G / 2                                   mean context during decoding (tokens)
    kv_per_tok  = 2 * n_layers * n_kv_heads * head_dim * kv_bytes            (K and V; bytes)
    KV          = B * L * kv_per_tok                                         (bytes per step)
    W(B)        = dense_params * w_bytes + lm_head_params * head_bytes
                  + E(B) * expert_params * w_bytes                           (bytes per step)
    E(B)        = n_experts * (1 - (1 - k / n_experts) ** B)   experts touched per layer (MoE only)
    BW          = sum of the GPUs' memory bandwidths                         (bytes/s)
    m           = min(B, pp)                                   micro-batches in flight
    step_s     >= pp * (W(B) + KV / m) / BW
    tokens/s   <= B / step_s             (whole cell)    and   per user <= 1 / step_s

Assumptions, which make this an upper bound on decode throughput (vLLM reaches maybe 40-80 % of it):
- Tensor parallelism shards weights and KV evenly, so the GPUs' bandwidths add up; the all-reduces
  between them are free.
- Pipeline parallelism (pp stages) does not add bandwidth for decoding: a micro-batch visits the
  stages in turn and every micro-batch re-reads the stage's weights. With pp = 1 the formula is
  (W + KV) / BW.
- MoE: E(B) assumes each of the B tokens picks k of the n experts uniformly and independently, so B = 1
  reads k experts (the "active parameters") and a large batch reads them all. Real routing is skewed
  and touches fewer experts, so for MoE this is an estimate rather than a strict bound.
- Quantized weights (AWQ/GPTQ, grouped): bits/8 bytes per weight plus a 16-bit scale and a
  bits-wide zero point per group of 128 (4-bit: 0.5195 B, 8-bit: 1.0234 B). The LM head stays 16-bit.
  Embedding lookups read B rows only and are ignored; norms and MoE routers are counted at w_bytes.
- Prefill, sampling, scheduling and the time to first token are ignored, while the measured total
  tokens/s of a cell includes them: "percent of bound" understates decode efficiency at long prompts.
- Bandwidths are the vendors' datasheet peaks (`GPU_BANDWIDTH`); sustained bandwidth is ~80-90 % of it.

Example (the study's Table I): Mistral-7B fp16 (7.24 B params, all counted as read: 14.48 GB) on
2x V100 (2 x 900 GB/s), 1 user, P = 31, G = 100: KV = 81 * 131 072 B = 10.6 MB; step >= 14.49 GB /
1.8 TB/s = 8.05 ms; bound = 124 tokens/s (126 from config.json, which leaves the embedding out).
The study measured 100 tokens in 1.8 s, 56 tokens/s: 45 % of the bound.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..results import CellResult
from .gpu_specs import GB, gpu_bandwidth, parse_gpu_layout
from ..server.presets import ModelChoice, Preset



# -- model facts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What decoding reads: parameter counts by role, bytes per weight, and the KV-cache geometry.

    Built from explicit values (all `params` are then read every step at `weight_bytes`) or from a
    config.json (`from_config_dir`), which separates the LM head, the embeddings and the experts.
    """

    name: str
    params: float
    weight_bytes: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_bytes: float = 2.0
    lm_head_params: float = 0.0  # read every step at head_bytes (quantizers leave it 16-bit)
    head_bytes: float = 2.0
    embedding_params: float = 0.0  # looked up, not read, per step
    expert_params: float = 0.0  # one expert's parameters summed over all layers; 0 for a dense model
    num_experts: int = 0
    experts_per_token: int = 0

    @property
    def dense_params(self) -> float:
        """Decoder parameters every token reads (attention, dense MLPs, norms, routers)."""
        return self.params - self.lm_head_params - self.embedding_params - self.num_experts * self.expert_params

    @property
    def active_params(self) -> float:
        """Parameters one token reads, embedding excluded: Mixtral-8x7B 12.7 B of 46.7 B (12.9 B with it)."""
        return self.dense_params + self.lm_head_params + self.experts_per_token * self.expert_params

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token of context occupies: K and V in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes

    def experts_touched(self, batch: int) -> float:
        """Expected distinct experts per layer for `batch` tokens under uniform, independent routing."""
        if self.num_experts == 0:
            return 0.0
        return self.num_experts * (1 - (1 - self.experts_per_token / self.num_experts) ** batch)

    def weight_bytes_per_step(self, batch: int) -> float:
        """Bytes of weights one decode step of `batch` sequences reads."""
        return (self.dense_params * self.weight_bytes + self.lm_head_params * self.head_bytes
                + self.experts_touched(batch) * self.expert_params * self.weight_bytes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, name: str = "model", quantization: str | None = None,
                    dtype: str | None = None, kv_cache_dtype: str | None = None) -> ModelFacts:
        """From a Hugging Face config of the Llama / Mistral / Mixtral / Qwen2 family (gated MLPs)."""
        shape = _Shape.from_config(config)
        qcfg = config.get("quantization_config") or {}
        act_bytes = dtype_bytes(dtype or config.get("torch_dtype") or config.get("dtype"))
        w_bytes = bytes_per_weight(quantization or qcfg.get("quant_method"), act_bytes,
                                   bits=qcfg.get("bits"), group_size=qcfg.get("group_size"))
        return cls(
            name=name, params=shape.total(), weight_bytes=w_bytes, num_layers=shape.layers,
            num_kv_heads=shape.kv_heads, head_dim=shape.head_dim,
            kv_bytes=1.0 if kv_cache_dtype and kv_cache_dtype.lower().startswith("fp8") else act_bytes,
            lm_head_params=shape.vocab * shape.hidden, head_bytes=act_bytes,
            embedding_params=0.0 if shape.tied else shape.vocab * shape.hidden,
            expert_params=shape.expert() * shape.layers, num_experts=shape.experts,
            experts_per_token=shape.experts_per_token,
        )

    @classmethod
    def from_config_dir(cls, path: str | Path, quantization: str | None = None, dtype: str | None = None,
                        *, kv_cache_dtype: str | None = None) -> ModelFacts:
        """Read `path/config.json`; the model is named after the folder."""
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        return cls.from_config(config, name=Path(path).name, quantization=quantization, dtype=dtype,
                               kv_cache_dtype=kv_cache_dtype)


@dataclass(frozen=True, slots=True)
class _Shape:
    """The dimensions of a decoder-only transformer with gated MLPs, as config.json states them."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int
    experts_per_token: int
    moe_intermediate: int

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> _Shape:
        heads = int(c["num_attention_heads"])
        experts = int(c.get("num_local_experts") or c.get("num_experts") or 0)
        return cls(
            hidden=int(c["hidden_size"]), intermediate=int(c["intermediate_size"]),
            layers=int(c["num_hidden_layers"]), heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
            vocab=int(c["vocab_size"]), tied=bool(c.get("tie_word_embeddings", False)),
            experts=experts, experts_per_token=int(c.get("num_experts_per_tok") or 0) if experts else 0,
            moe_intermediate=int(c.get("moe_intermediate_size") or c["intermediate_size"]),
        )

    def attention(self) -> int:
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        return q_and_o + 2 * self.hidden * self.kv_heads * self.head_dim

    def expert(self) -> int:
        """One gated MLP expert of one layer: gate, up and down projections."""
        return 3 * self.hidden * self.moe_intermediate

    def layer_dense(self) -> int:
        mlp = self.hidden * self.experts if self.experts else 3 * self.hidden * self.intermediate  # router
        return self.attention() + mlp + 2 * self.hidden  # two RMSNorms

    def total(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (self.layer_dense() + self.experts * self.expert()) + embeddings + self.hidden


def dtype_bytes(dtype: str | None) -> float:
    """Bytes of one element of a torch dtype name ('bfloat16', 'fp32', 'auto'); 16-bit when unknown."""
    d = (dtype or "auto").lower().replace("torch.", "")
    if d in ("float32", "fp32", "float"):
        return 4.0
    if d.startswith("fp8") or d.startswith("float8"):
        return 1.0
    return 2.0


def bytes_per_weight(quantization: str | None, unquantized_bytes: float = 2.0, *, bits: int | None = None,
                     group_size: int | None = None) -> float:
    """Bytes per stored weight: 'AWQ 4-bit' 0.5195, 'GPTQ 8-bit' 1.0234, 'fp8' 1, None the dtype's bytes.

    Grouped integer formats store bits/8 bytes per weight plus, per group (128 unless told), a 16-bit
    scale and a bits-wide zero point.
    """
    if not quantization:
        return unquantized_bytes
    q = quantization.lower()
    if "fp8" in q or "float8" in q:
        return 1.0
    if bits is None:
        m = re.search(r"(\d+)[- ]?bit|int(\d+)|w(\d+)a", q)
        bits = int(next(g for g in m.groups() if g)) if m else 4  # AWQ and GPTQ default to 4 bits
    group = group_size if group_size and group_size > 0 else 128
    return bits / 8 + (2 + bits / 8) / group


# -- the bound ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """The bandwidth bound of one cell; see the module docstring for the formula."""

    tokens_per_s: float
    per_user_tokens_per_s: float
    step_s: float
    bytes_per_step: float
    weight_bytes: float
    kv_bytes: float
    bandwidth_bytes_per_s: float
    batch: int
    context_tokens: float
    pipeline_parallel: int
    assumptions: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NoBound:
    """Why no bound could be computed (an unknown GPU, an empty layout). False in a boolean test."""

    reason: str

    def __bool__(self) -> bool:
        return False


def decode_bound(facts: ModelFacts, gpus: Sequence[str] | str, users: int, prompt_tokens: int, max_tokens: int,
                 *, pipeline_parallel: int = 1) -> Bound | NoBound:
    """Upper bound on decode tokens/s for `users` concurrent sequences on `gpus` (names or '2x A100')."""
    names = parse_gpu_layout(gpus) if isinstance(gpus, str) else list(gpus)
    bandwidth = total_bandwidth(names)
    if isinstance(bandwidth, NoBound):
        return bandwidth
    if users < 1 or pipeline_parallel < 1 or len(names) % pipeline_parallel:
        return NoBound(f"cannot bound users={users} on {len(names)} GPU(s) with pipeline_parallel={pipeline_parallel}")
    context = prompt_tokens + max_tokens / 2
    weights = facts.weight_bytes_per_step(users)
    kv = users * context * facts.kv_bytes_per_token
    micro = min(users, pipeline_parallel)
    step = pipeline_parallel * (weights + kv / micro) / bandwidth
    return Bound(tokens_per_s=users / step, per_user_tokens_per_s=1 / step, step_s=step,
                 bytes_per_step=weights + kv, weight_bytes=weights, kv_bytes=kv,
                 bandwidth_bytes_per_s=bandwidth, batch=users, context_tokens=context,
                 pipeline_parallel=pipeline_parallel, assumptions=_assumptions(facts, names, pipeline_parallel))


def total_bandwidth(names: Sequence[str]) -> float | NoBound:
    """Sum of the GPUs' datasheet bandwidths in bytes/s, or NoBound naming the unknown GPU."""
    if not names:
        return NoBound("no GPU given: the bandwidth bound needs the server's GPU names")
    total = 0.0
    for n in names:
        row = gpu_bandwidth(n)
        if row is None:
            return NoBound(f"unknown GPU {n!r}: add its memory bandwidth to gpu_specs.GPU_BANDWIDTH")
        total += row.gb_per_s * GB
    return total


def _assumptions(facts: ModelFacts, names: Sequence[str], pp: int) -> str:
    rows = [gpu_bandwidth(n) for n in names]
    sources = sorted({f"{r.source}{' (approximate)' if r.approximate else ''}" for r in rows if r})
    parts = [
        f"decode only, memory-bound: each step reads {facts.name}'s weights once "
        f"({facts.weight_bytes:.4g} B/weight) plus every sequence's KV cache "
        f"({facts.kv_bytes_per_token:.0f} B/token) at context prompt + max_tokens/2",
        f"{len(names)} GPU(s), bandwidths added (tensor parallel, communication free)",
        f"pipeline parallel {pp}: stages take turns" if pp > 1 else "no pipeline parallelism",
        "prefill, sampling and scheduling ignored",
        "bandwidth: " + "; ".join(sources),
    ]
    if facts.num_experts:
        parts.insert(1, f"MoE: experts touched per layer = {facts.num_experts} * (1 - (1 - "
                        f"{facts.experts_per_token}/{facts.num_experts})^B), uniform routing (an estimate)")
    return "; ".join(parts)


def percent_of_bound(measured_total_tokens_per_s: float | None, bound: Bound | NoBound) -> float | None:
    """Measured total tokens/s as a percentage of the bound; None when either is missing."""
    if not isinstance(bound, Bound) or measured_total_tokens_per_s is None:
        return None
    return 100.0 * measured_total_tokens_per_s / bound.tokens_per_s


# -- per-cell section ---------------------------------------------------------------------------


def concurrency(result: CellResult) -> int | None:
    """Sequences in flight: the users of a closed-loop cell; requests/s x mean E2E (Little's law) if open."""
    if result.mode != "open":
        return result.users
    if result.stats is None or result.stats.e2e is None:
        return None
    return max(1, round(result.stats.requests_per_s * result.stats.e2e.mean))


def physical_limit_section(result: CellResult, facts: ModelFacts, gpu_names: Sequence[str] | str,
                           *, pipeline_parallel: int = 1) -> dict[str, Any]:
    """The section for result.extra["physical_limit"]: the bound, the measurement and their ratio."""
    batch = concurrency(result)
    if batch is None:
        return {"available": False, "reason": "open-loop cell without latencies: concurrency unknown"}
    bound = decode_bound(facts, gpu_names, batch, result.prompt_tokens, result.max_tokens,
                         pipeline_parallel=pipeline_parallel)
    if isinstance(bound, NoBound):
        return {"available": False, "reason": bound.reason}
    measured = result.total_tokens_per_s if result.ok else None
    pct = percent_of_bound(measured, bound)
    section: dict[str, Any] = {"available": True, **bound.to_dict(), "measured_tokens_per_s": measured,
                               "percent_of_bound": pct, "warnings": []}
    if pct is not None and pct > 100 and not math.isclose(pct, 100):
        section["warnings"].append(
            f"measured {measured:.4g} tokens/s is {pct:.0f} % of the bandwidth bound: the GPU names, the "
            "model facts or the token counts are wrong.")
    return section


# -- wiring for the session ---------------------------------------------------------------------

def facts_from_preset(preset: Preset, quantization: str | None = None) -> ModelFacts:
    """ModelFacts from a preset (explicit totals; one expert's size derived from total vs active)."""
    quant = quantization or preset.quantization
    bits = preset.weight_bits
    w_bytes = bytes_per_weight(quant, bits / 8, bits=bits) if quant and bits < 16 else bits / 8
    total, active = preset.params_b * 1e9, preset.active_params_b * 1e9
    n, k = preset.num_experts, preset.experts_per_token
    # total = dense + n * e and active = dense + k * e  =>  e = (total - active) / (n - k)
    expert = (total - active) / (n - k) if n > k else 0.0
    return ModelFacts(name=preset.name, params=total, weight_bytes=w_bytes, num_layers=preset.num_layers,
                      num_kv_heads=preset.num_kv_heads, head_dim=preset.head_dim, kv_bytes=preset.kv_bits / 8,
                      expert_params=expert, num_experts=n, experts_per_token=k)


def model_facts_for(choice: ModelChoice, quantization: str | None = None, dtype: str | None = None
                    ) -> ModelFacts | None:
    """ModelFacts for a resolved model: its local config.json if it has one, else its preset.

    None for a hub id without a preset (its config.json is not available offline).
    """
    preset = choice.preset
    folder = Path(choice.model)
    if (folder / "config.json").is_file():
        return ModelFacts.from_config_dir(folder, quantization or (preset.quantization if preset else None),
                                          dtype or (preset.dtype if preset else None))
    return facts_from_preset(preset, quantization) if preset is not None else None


class PhysicalLimitObserver:
    """Cell observer "physical_limit": the bandwidth bound of each cell and the measured share of it.

    GPU names come from `gpu_names`, else from NVML for `gpu_indices` (else the first
    tensor_parallel x pipeline_parallel GPUs). Without them the observer says so once and then
    returns None.
    """

    name = "physical_limit"

    def __init__(self, facts: ModelFacts, *, gpu_indices: Sequence[int] | None = None,
                 gpu_names: Sequence[str] | None = None, tensor_parallel: int = 1,
                 pipeline_parallel: int = 1, reader: Any = None) -> None:
        self.facts = facts
        self.pipeline_parallel = pipeline_parallel
        self._reported_unavailable = False
        self.unavailable_reason: str | None = None
        n = max(1, tensor_parallel) * max(1, pipeline_parallel)
        self.gpu_names = list(gpu_names) if gpu_names is not None else self._names(gpu_indices, n, reader)

    def _names(self, indices: Sequence[int] | None, n: int, reader: Any) -> list[str]:
        from .gpu import NvmlReader

        try:
            reader = reader if reader is not None else NvmlReader()
            names: list[str] = list(reader.names())
        except Exception as exc:  # no driver, no nvidia-ml-py: no GPU names, no bound
            self.unavailable_reason = f"GPU names unavailable ({type(exc).__name__}: {exc}); no physical limit"
            return []
        finally:
            getattr(reader, "close", lambda: None)()
        if indices is not None:
            return [names[i] for i in indices if 0 <= i < len(names)]
        return names[:n]

    def before_cell(self, spec: Any) -> None:
        """Nothing to do before a cell."""

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        """The physical-limit section of this cell; without GPU names a reason once, then None."""
        if not self.gpu_names:
            if self._reported_unavailable:
                return None
            self._reported_unavailable = True
            return {"available": False, "reason": self.unavailable_reason or "no GPU names"}
        return physical_limit_section(result, self.facts, self.gpu_names,
                                      pipeline_parallel=self.pipeline_parallel)

    def close(self) -> None:
        """Nothing to release."""

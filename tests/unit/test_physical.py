"""The bandwidth bound against numbers computed by hand, the GPU table, and the per-cell section."""

from __future__ import annotations

import json

import pytest

from pytest_llmload.metrics import cell_stats
from pytest_llmload.observe.gpu_specs import gpu_bandwidth, parse_gpu_layout
from pytest_llmload.observe.physical import (
    Bound,
    ModelFacts,
    NoBound,
    PhysicalLimitObserver,
    bytes_per_weight,
    decode_bound,
    facts_from_preset,
    model_facts_for,
    percent_of_bound,
    physical_limit_section,
)
from pytest_llmload.results import CellResult, RequestRecord

# Mistral-7B as its model card states it; every parameter counted as read every step.
MISTRAL = ModelFacts(name="Mistral-7B", params=7.24e9, weight_bytes=2, num_layers=32, num_kv_heads=8,
                     head_dim=128, kv_bytes=2)
MISTRAL_CONFIG = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                  "torch_dtype": "bfloat16", "tie_word_embeddings": False}
MIXTRAL_CONFIG = dict(MISTRAL_CONFIG, num_local_experts=8, num_experts_per_tok=2)
MIXTRAL_8X22B_CONFIG = dict(MIXTRAL_CONFIG, hidden_size=6144, intermediate_size=16384, num_hidden_layers=56,
                            num_attention_heads=48, vocab_size=32768)


def test_mistral_7b_fp16_on_two_v100_one_user():
    b = decode_bound(MISTRAL, ["Tesla V100-SXM2-16GB"] * 2, users=1, prompt_tokens=31, max_tokens=100)
    assert isinstance(b, Bound)
    assert MISTRAL.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert b.context_tokens == 81
    assert b.kv_bytes == 81 * 131_072
    assert b.weight_bytes == 14.48e9
    assert b.bandwidth_bytes_per_s == 1.8e12
    assert b.step_s == pytest.approx((14.48e9 + 81 * 131_072) / 1.8e12)  # 8.05 ms
    assert b.tokens_per_s == pytest.approx(124.2, abs=0.05)
    assert b.per_user_tokens_per_s == b.tokens_per_s


def test_batch_shares_the_weights_and_adds_kv():
    b = decode_bound(MISTRAL, "2x V100 16GB", users=32, prompt_tokens=480, max_tokens=100)
    kv = 32 * 530 * 131_072
    assert b.kv_bytes == kv
    assert b.tokens_per_s == pytest.approx(32 * 1.8e12 / (14.48e9 + kv))  # 3633 tokens/s


def test_mistral_params_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_CONFIG))
    f = ModelFacts.from_config_dir(tmp_path)
    assert f.params == 7_241_732_096  # Mistral-7B's published parameter count
    assert f.weight_bytes == 2 and f.kv_bytes == 2 and f.name == tmp_path.name
    assert f.lm_head_params == f.embedding_params == 32000 * 4096
    # The embedding is looked up, not read: 7.2417 B - 0.131 B parameters read per step.
    assert f.weight_bytes_per_step(1) == (7_241_732_096 - 131_072_000) * 2


def test_mixtral_active_parameters_and_experts_touched():
    f = ModelFacts.from_config(MIXTRAL_CONFIG, quantization="AWQ 4-bit")
    assert f.params / 1e9 == pytest.approx(46.70, abs=0.01)
    assert (f.active_params + f.embedding_params) / 1e9 == pytest.approx(12.88, abs=0.01)
    assert f.experts_touched(1) == 2
    assert f.experts_touched(2) == pytest.approx(8 * (1 - 0.75**2))  # 3.5
    assert f.experts_touched(128) == pytest.approx(8)
    expert = 3 * 4096 * 14336 * 32
    assert f.expert_params == expert
    assert f.weight_bytes_per_step(2) - f.weight_bytes_per_step(1) == pytest.approx(1.5 * expert * 0.51953125)


def test_mixtral_8x22b_sizes():
    f = ModelFacts.from_config(MIXTRAL_8X22B_CONFIG)
    assert f.params / 1e9 == pytest.approx(140.6, abs=0.1)
    assert f.active_params / 1e9 == pytest.approx(39.0, abs=0.1)


def test_quantization_in_config_json_and_fp8_kv():
    cfg = dict(MISTRAL_CONFIG, torch_dtype="float16",
               quantization_config={"quant_method": "gptq", "bits": 8, "group_size": 64})
    f = ModelFacts.from_config(cfg, kv_cache_dtype="fp8_e5m2")
    assert f.weight_bytes == 1 + 3 / 64 and f.head_bytes == 2 and f.kv_bytes == 1


@pytest.mark.parametrize("quant, expected", [
    (None, 2.0), ("AWQ 4-bit", 0.5 + 2.5 / 128), ("awq", 0.5 + 2.5 / 128), ("gptq", 0.5 + 2.5 / 128),
    ("GPTQ 8-bit", 1 + 3 / 128), ("fp8", 1.0),
])
def test_bytes_per_weight(quant, expected):
    assert bytes_per_weight(quant) == expected


def test_pipeline_parallel_does_not_add_bandwidth():
    tp = decode_bound(MISTRAL, "2x A100 40GB", 1, 31, 100)
    pp = decode_bound(MISTRAL, "2x A100 40GB", 1, 31, 100, pipeline_parallel=2)
    assert pp.step_s == pytest.approx(2 * tp.step_s)  # one stage at a time
    full = decode_bound(MISTRAL, "2x A100 40GB", 2, 31, 100, pipeline_parallel=2)
    assert full.step_s == pytest.approx(2 * (14.48e9 + full.kv_bytes / 2) / (2 * 1555e9))


@pytest.mark.parametrize("name, gb_s", [
    ("Tesla V100-SXM2-16GB", 900), ("Tesla V100-PCIE-32GB", 900), ("Tesla V100S-PCIE-32GB", 1134),
    ("NVIDIA A100-SXM4-40GB", 1555), ("NVIDIA A100-PCIE-40GB", 1555), ("NVIDIA A100 80GB PCIe", 1935),
    ("NVIDIA A100-SXM4-80GB", 2039), ("NVIDIA H100 PCIe", 2000), ("NVIDIA H100 80GB HBM3", 3350),
    ("NVIDIA H100 NVL", 3900), ("NVIDIA H200", 4800), ("NVIDIA GH200 480GB", 4000), ("NVIDIA L4", 300),
    ("NVIDIA L40S", 864), ("NVIDIA L40", 864), ("NVIDIA A10", 600), ("NVIDIA A10G", 600), ("Tesla T4", 320),
    ("NVIDIA GeForce RTX 4090", 1008), ("NVIDIA GeForce RTX 3090", 936), ("NVIDIA RTX A6000", 768),
    ("NVIDIA RTX 6000 Ada Generation", 960), ("AMD Instinct MI300X", 5300), ("A100 40GB", 1555),
])
def test_gpu_table(name, gb_s):
    assert gpu_bandwidth(name).gb_per_s == gb_s


def test_unknown_gpu_is_no_bound_with_a_reason():
    b = decode_bound(MISTRAL, ["Voodoo3 3000"], 1, 31, 100)
    assert isinstance(b, NoBound) and not b and "Voodoo3 3000" in b.reason
    assert isinstance(decode_bound(MISTRAL, [], 1, 31, 100), NoBound)
    assert percent_of_bound(100.0, b) is None


def test_layout_strings():
    assert parse_gpu_layout("2x V100 16GB") == ["V100 16GB", "V100 16GB"]
    assert parse_gpu_layout("NVIDIA H100 80GB HBM3") == ["NVIDIA H100 80GB HBM3"]


def test_percent_of_bound():
    b = decode_bound(MISTRAL, "2x V100", 1, 31, 100)
    assert percent_of_bound(b.tokens_per_s / 2, b) == pytest.approx(50)
    assert percent_of_bound(None, b) is None


def closed_cell(users: int, seconds: float) -> CellResult:
    records = tuple(RequestRecord(index=i, start=0.0, end=seconds, first_token=0.1, output_tokens=100)
                    for i in range(users))
    return CellResult(users=users, prompt_tokens=31, max_tokens=100, ok=True, stats=cell_stats(records),
                      records=records)


def test_section_for_the_studys_first_cell():
    # Table I: 1 user, 31 tokens, 1.8 s for 100 tokens -> 55.6 tokens/s, 45 % of 124.2.
    s = physical_limit_section(closed_cell(1, 1.8), MISTRAL, "2x V100 16GB")
    assert s["available"] and s["batch"] == 1
    assert s["measured_tokens_per_s"] == pytest.approx(100 / 1.8)
    assert s["percent_of_bound"] == pytest.approx(100 * (100 / 1.8) / 124.22, abs=0.05)
    assert s["warnings"] == [] and "V100" in s["assumptions"]
    json.dumps(s)


def test_section_warns_above_the_bound_and_explains_unknown_gpus():
    s = physical_limit_section(closed_cell(1, 0.1), MISTRAL, "2x V100 16GB")  # 1000 tokens/s: impossible
    assert s["percent_of_bound"] > 100 and "wrong" in s["warnings"][0]
    s = physical_limit_section(closed_cell(1, 1.8), MISTRAL, ["Mystery GPU"])
    assert s == {"available": False, "reason": s["reason"]} and "Mystery GPU" in s["reason"]


def test_open_loop_concurrency_from_littles_law():
    records = tuple(RequestRecord(index=i, start=i * 0.5, end=i * 0.5 + 2.0, first_token=i * 0.5 + 0.1,
                                  output_tokens=100) for i in range(9))
    cell = CellResult(users=0, prompt_tokens=31, max_tokens=100, ok=True, stats=cell_stats(records),
                      records=records, mode="open", rate=2.0)
    # 9 requests in 6 s = 1.5 req/s, 2 s each: 3 in flight.
    assert physical_limit_section(cell, MISTRAL, "2x V100")["batch"] == 3


def test_presets_give_facts_and_bounds():
    from pytest_llmload.server.presets import PRESETS

    mistral = facts_from_preset(PRESETS["mistral-7b"])
    assert mistral.weight_bytes == 2 and mistral.num_experts == 0
    mixtral = facts_from_preset(PRESETS["mixtral-8x7b-awq"])
    assert mixtral.num_experts == 8 and mixtral.active_params == pytest.approx(12.9e9)
    assert mixtral.params == pytest.approx(46.7e9) and mixtral.weight_bytes == bytes_per_weight("awq")
    for name, preset in PRESETS.items():
        if name != "tiny":
            assert decode_bound(facts_from_preset(preset), preset.gpus, 8, 480, 100), name


def test_model_facts_for_a_local_folder_and_a_preset(tmp_path):
    from pytest_llmload.server.presets import PRESETS, ModelChoice

    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_CONFIG))
    local = model_facts_for(ModelChoice(model=str(tmp_path), served_model_name="m", preset=None))
    assert local.params == 7_241_732_096
    preset = PRESETS["codestral-22b-awq"]
    facts = model_facts_for(ModelChoice(model=preset.model, served_model_name="c", preset=preset))
    assert facts.params == pytest.approx(22.2e9)
    assert model_facts_for(ModelChoice(model="org/unknown", served_model_name="u", preset=None)) is None


class NamesReader:
    def names(self) -> list[str]:
        return ["NVIDIA A100-SXM4-40GB"] * 4


def test_observer_uses_the_first_tp_gpus_or_says_why_not():
    obs = PhysicalLimitObserver(MISTRAL, tensor_parallel=2, reader=NamesReader())
    assert obs.gpu_names == ["NVIDIA A100-SXM4-40GB"] * 2
    section = obs.after_cell(closed_cell(1, 1.0))
    assert section["bandwidth_bytes_per_s"] == 2 * 1555e9
    blind = PhysicalLimitObserver(MISTRAL, reader=_Broken())
    first = blind.after_cell(closed_cell(1, 1.0))
    assert first["available"] is False and "no driver" in first["reason"]
    assert blind.after_cell(closed_cell(1, 1.0)) is None


class _Broken:
    def names(self) -> list[str]:
        raise RuntimeError("no driver")

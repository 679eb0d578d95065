"""Exports (vllm-bench, github-action-benchmark, Bencher) and imports of vLLM bench, GuideLLM and AIPerf
results. The files in tests/data/foreign were written by the tools themselves against the tiny model on
the CPU vLLM: `vllm bench serve` of vLLM 0.32 (default keys; --percentile-metrics ttft,tpot,itl,e2el
--metric-percentiles 50,90,95,99; --save-detailed), GuideLLM 0.8.1 (`guidellm run --profile
kind=concurrent,streams=4`) and AIPerf 0.13.0 (`aiperf profile --concurrency 4`), 63 prompt tokens, 16
output tokens, 8 requests at concurrency 4."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pytest_llmload.errors import ReportFileError
from pytest_llmload.gate.compare import compare
from pytest_llmload.options import parse_export_list
from pytest_llmload.report.exports import write_exports
from pytest_llmload.report.imports import read_foreign, sniff
from pytest_llmload.report.json_report import load_baseline
from pytest_llmload.report.reference import reference_from, render_ratio
from pytest_llmload.report.vllm_bench import result_document
from pytest_llmload.results import RunResult
from pytest_llmload.vocabulary import parse_gate

from factories import cell

FOREIGN = Path(__file__).parent.parent / "data" / "foreign"
ENV = {"model": "tiny", "served_model_name": "tiny", "workload": {"api": "completions", "rounds": 2}}


def _run(itl: float = 0.003, invalid_second: bool = False) -> RunResult:
    cells = []
    for repeat in range(3):
        c = cell(4, 63, itl=itl * (1 + 0.02 * repeat), ttft=0.02, tokens=16)
        c = dataclasses.replace(c, records=c.records * 2, rounds=2, t0_unix_ns=1_796_436_862_000_000_000)
        if invalid_second and repeat == 1:
            c = dataclasses.replace(c, valid=False, invalid_reasons=("start spread 1 s",))
        cells.append(c)
    return RunResult(environment=dict(ENV), cells=cells)


@pytest.mark.parametrize("name,fmt", [("vllm-bench-default.json", "vllm-bench"), ("vllm-bench-e2el.json", "vllm-bench"),
                                      ("guidellm-benchmarks.json", "guidellm"),
                                      ("aiperf-profile_export_aiperf.json", "aiperf")])
def test_real_files_become_the_cell_they_measured(name: str, fmt: str) -> None:
    path = FOREIGN / name
    assert sniff(path) == fmt
    run = read_foreign(path)
    (c,) = run.cells
    assert (c.users, c.prompt_tokens, c.max_tokens) == (4, 63, 16)
    assert c.stats is not None and c.stats.requests_ok == 8 and c.e2e is not None and 0.01 < c.e2e.mean < 2
    assert c.ttft is not None and c.ttft.mean < c.e2e.mean
    assert run.environment["model"] == "tiny" and run.extra["import_notes"] == []


def test_our_vllm_bench_export_has_the_real_files_keys_order_and_types(tmp_path: Path) -> None:
    real = json.loads((FOREIGN / "vllm-bench-e2el.json").read_text())
    ours = result_document(_run().cells[0], ENV)
    assert list(ours) == list(real)
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in real.items()}


def test_exports_leave_out_invalid_repeats_and_validate(tmp_path: Path) -> None:
    paths = write_exports(_run(invalid_second=True), parse_export_list("vllm-bench,github-benchmark,bencher"), tmp_path)
    bench = sorted((tmp_path / "vllm-bench" / "u4-p63-m16").glob("*.json"))
    assert [p.name.rsplit("-", 1)[1] for p in bench] == ["repeat1.json", "repeat3.json"]
    assert "invalid: start spread 1 s" in (tmp_path / "vllm-bench" / "SKIPPED.txt").read_text()
    smaller = json.loads((tmp_path / "github-benchmark-smaller.json").read_text())
    bigger = json.loads((tmp_path / "github-benchmark-bigger.json").read_text())
    for entry in smaller + bigger:  # github-action-benchmark's BenchmarkResult
        assert set(entry) == {"name", "unit", "value", "range", "extra"}
        assert isinstance(entry["value"], float) and isinstance(entry["name"], str) and entry["range"].startswith("± ")
    assert {e["name"] for e in smaller} >= {"e2e_p50 [u4-p63-m16]", "ttft_p95 [u4-p63-m16]"}
    assert {e["unit"] for e in bigger} == {"tok/s", "req/s"}
    bmf = json.loads((tmp_path / "bencher.json").read_text())
    schema = {"type": "object", "patternProperties": {".+": {"type": "object", "patternProperties": {".+": {
        "type": "object", "properties": {k: {"type": "number"} for k in ("value", "lower_value", "upper_value")},
        "required": ["value"]}}}}}  # Bencher's published BMF JSON schema
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(bmf, schema)
    m = bmf["llmload u4-p63-m16"]["e2e-p50-s"]
    assert m["lower_value"] <= m["value"] <= m["upper_value"] and all(len(k) <= 64 for k in bmf["llmload u4-p63-m16"])
    assert len(paths) == 6


def test_our_export_read_back_and_a_folder_of_real_results_as_a_baseline(tmp_path: Path) -> None:
    write_exports(_run(), ["vllm-bench"], tmp_path)
    back = load_baseline(tmp_path / "vllm-bench")
    assert len(back.cells) == 3 and {c.extra["baseline_session"] for c in back.cells} == {0, 1, 2}
    folder = tmp_path / "real"
    folder.mkdir()
    for name in ("vllm-bench-default.json", "vllm-bench-e2el.json", "vllm-bench-detailed.json"):
        shutil.copy(FOREIGN / name, folder / name)
    (folder / "notes.json").write_text('{"hello": 1}')
    baseline = load_baseline(folder)
    assert len(baseline.cells) == 3
    assert any("notes.json: not a vLLM bench" in n for n in baseline.extra["import_notes"])
    comparison = compare(_run(itl=0.003), baseline, [parse_gate("e2e_p50:10%")])
    (cc,) = comparison.cells
    assert len(cc.baseline) == 3 and cc.gates[0].verdict in VERDICT_OR_CHANGE
    assert comparison.cells[0].gates[0].change_pct is not None


VERDICT_OR_CHANGE = ("regression", "ok", "improved", "inconclusive")


def test_unmatched_things_are_named_never_guessed(tmp_path: Path) -> None:
    doc = json.loads((FOREIGN / "vllm-bench-default.json").read_text())
    (tmp_path / "rate.json").write_text(json.dumps({**doc, "request_rate": 4.0}))
    (tmp_path / "ok.json").write_text(json.dumps({**doc, "max_concurrency": 8}))
    ref = reference_from(tmp_path)
    text = render_ratio(_run(), ref)
    assert "request rate 4.0/s, an open loop" in text
    assert "in the reference only (no cell of this run): users=8 prompt_tokens=63" in text
    with pytest.raises(ReportFileError, match="no result that matches a cell"):
        read_foreign(tmp_path / "rate.json")


def test_a_reference_with_other_output_tokens_compares_no_cell() -> None:
    run = RunResult(environment=ENV, cells=[cell(4, 63, tokens=100)])
    text = render_ratio(run, reference_from(FOREIGN / "guidellm-benchmarks.json"))
    assert "generate 16 tokens, this run's [100]: no cell is compared" in text

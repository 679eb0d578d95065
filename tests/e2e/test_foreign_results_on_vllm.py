"""The real `vllm bench serve` (the cpu extra) against the tiny server: its result file is read as a
reference and as a baseline, and our vllm-bench export of a cell measured on the same server has the
same keys, in the same order, of the same types. Kept short: 4 users, 4 prompts, 16 tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytest_llmload.gate.compare import compare
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.report.exports import write_exports
from pytest_llmload.report.json_report import load_baseline
from pytest_llmload.report.reference import reference_from, render_ratio
from pytest_llmload.report.vllm_bench import VLLM_BENCH_FLAGS
from pytest_llmload.results import RunResult
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.vocabulary import parse_gate


def test_vllm_bench_result_is_imported_and_our_export_matches_it(tiny_server: VLLMServer, tmp_path: Path) -> None:
    tokenizer = tiny_server.spec.model
    vllm = str(Path(sys.executable).with_name("vllm"))
    cmd = [vllm, "bench", "serve", "--backend", "openai", "--base-url", tiny_server.base_url, "--model", tiny_server.model,
           "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", "63", "--random-output-len",
           "16", "--num-prompts", "4", "--max-concurrency", "4", "--ignore-eos", "--temperature", "0", *VLLM_BENCH_FLAGS,
           "--save-result", "--result-dir", str(tmp_path / "bench"), "--result-filename", "real.json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    real = json.loads((tmp_path / "bench" / "real.json").read_text())

    with LoadRunner(tiny_server.base_url, tiny_server.model, progress=False, request_timeout_s=300) as runner:
        cells = [runner.run_cell_kw(users=4, prompt_tokens=63, max_tokens=16) for _ in range(2)]
    env = {"model": tiny_server.model, "served_model_name": tiny_server.model,
           "workload": {"api": "completions", "rounds": 1}}
    run = RunResult(environment=env, cells=cells)
    write_exports(run, ["vllm-bench"], tmp_path / "ours")
    ours_files = sorted((tmp_path / "ours" / "vllm-bench" / "u4-p63-m16").glob("*.json"))
    assert ours_files, (tmp_path / "ours" / "vllm-bench" / "SKIPPED.txt").read_text()
    ours = json.loads(ours_files[0].read_text())
    assert list(ours) == list(real)
    assert {k: type(v).__name__ for k, v in ours.items()} == {k: type(v).__name__ for k, v in real.items()}
    assert ours["max_concurrency"] == real["max_concurrency"] == 4 and ours["completed"] == real["completed"] == 4

    baseline = load_baseline(tmp_path / "bench")
    (cell,) = baseline.cells
    assert (cell.users, cell.prompt_tokens, cell.max_tokens) == (4, 63, 16), cell.extra["source"]
    comparison = compare(run, baseline, [parse_gate("e2e_p50:50%")])
    assert len(comparison.cells) == 1 and comparison.cells[0].gates[0].change_pct is not None
    text = render_ratio(run, reference_from(tmp_path / "bench"))
    assert "E2E mean" in text and "4" in text.splitlines()[-1]

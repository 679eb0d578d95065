"""Workloads on the real vLLM CPU default (the tiny model), through the session users get (`LoadSession`
with the default settings: the plugin's launch, placement and observers):

(a) 8 users x 4 turns of conversation, cache cold: TTFT and the cached share by turn (per-request usage)
    and the cell's hit rate from vLLM's /metrics counters;
(b) one cell (8 users x 480 tokens, 16 output tokens) cold, then warm: hit rates and TTFT;
(c) the package's 200-request sample trace replayed open loop at its own arrival times: lateness of each
    start against its schedule (p50, p99, max) and records matched to the trace line by line.

    .venv/bin/python benchmarks/bench_workloads.py      # ~1.5 min on 2 cores

Writes results/workloads.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results  # noqa: E402
from pytest_llmload.load.trace import sample_workload  # noqa: E402
from pytest_llmload.options import Settings  # noqa: E402
from pytest_llmload.session import LoadSession  # noqa: E402
from pytest_llmload.session.fixtures import LoadFixture  # noqa: E402
from pytest_llmload.vocabulary import percentile  # noqa: E402

OUT = Path(__file__).parent / "results" / "workloads"


def main() -> None:
    doc: dict[str, Any] = {}
    with LoadSession(Settings(report_dir=str(Path("/tmp") / "llmload-bench-workloads"))) as session:
        load = LoadFixture(session)
        load(2, 31, 8)  # the first batch after a start is slow: not part of what is shown
        conv = load.conversations(users=8, turns=4, prompt_tokens=63, max_tokens=32, cache="cold")
        doc["conversation"] = {"valid": conv.valid, "invalid": list(conv.invalid_reasons),
                               "hit_rate_metrics": conv.prefix_cache_hit_rate,
                               "hit_rate_usage": conv.extra["prefix_cache"]["usage_hit_rate"],
                               "turns": conv.extra["turns"]}
        cold = load(8, 480, 16, cache="cold")
        warm = load(8, 480, 16, cache="warm")
        doc["cache"] = {name: {"valid": c.valid, "hit_rate": c.prefix_cache_hit_rate,
                               "ttft_mean_s": c.value("ttft", "mean"), "e2e_mean_s": c.value("e2e", "mean")}
                        for name, c in (("cold", cold), ("warm", warm))}
        workload = sample_workload()
        trace = load.replay(workload.path, goodput_ttft_ms=1000, goodput_tpot_ms=100)
        arrivals = workload.arrivals(1.0)
        late = sorted(r.start - arrivals[r.index] for r in trace.records)
        doc["trace"] = {"valid": trace.valid, "invalid": list(trace.invalid_reasons), "requests": len(trace.records),
                        "matches_trace": [(r.prompt_tokens, r.output_tokens) for r in trace.records]
                        == [(x.prompt_tokens, x.output_tokens) for x in workload.requests],
                        "lateness_s": {"p50": percentile(late, 50), "p99": percentile(late, 99), "max": late[-1]},
                        "goodput": trace.goodput, "ttft_p95_s": trace.value("ttft", "p95"),
                        "hit_rate": trace.prefix_cache_hit_rate}
    write_results(doc, OUT, write_markdown)


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    c = doc["conversation"]
    lines = ["# Workloads on the real vLLM CPU default (tiny model)", "",
             "`benchmarks/bench_workloads.py`: the plugin's own launch, placement and observers.", "",
             f"## (a) 8 users x 4 turns, 63-token messages, 32 output tokens, cache cold (valid: {c['valid']})", "",
             "| turn | prompt tokens (mean) | cached share (usage) | TTFT mean (ms) | TTFT p95 (ms) |", "|---|---|---|---|---|"]
    for t in c["turns"]:
        lines.append(f"| {t['turn']} | {t['prompt_tokens_mean']:.0f} | {t['cached_share']:.2f} | "
                     f"{t['ttft_s']['mean'] * 1000:.1f} | {t['ttft_s']['p95'] * 1000:.1f} |")
    lines += ["", f"Cell hit rate from /metrics: {c['hit_rate_metrics']:.3f}; from the requests' usage: "
              f"{c['hit_rate_usage']:.3f}.", "",
              "## (b) 8 users x 480 tokens, 16 output tokens: cold, then warm", "",
              "| state | valid | hit rate (/metrics) | TTFT mean (ms) | E2E mean (s) |", "|---|---|---|---|---|"]
    for name, v in doc["cache"].items():
        lines.append(f"| {name} | {v['valid']} | {v['hit_rate']:.3f} | {v['ttft_mean_s'] * 1000:.1f} | "
                     f"{v['e2e_mean_s']:.3f} |")
    t = doc["trace"]
    late = t["lateness_s"]
    lines += ["", "## (c) the 200-request sample trace, open loop at its arrival times", "",
              f"valid: {t['valid']} {t['invalid'] or ''}; requests {t['requests']}; records match the trace line by "
              f"line: {t['matches_trace']}; start lateness p50 {late['p50'] * 1000:.2f} ms, p99 "
              f"{late['p99'] * 1000:.2f} ms, max {late['max'] * 1000:.2f} ms; goodput (TTFT <= 1 s, TPOT <= 100 ms) "
              f"{t['goodput']:.3f}; TTFT p95 {t['ttft_p95_s'] * 1000:.0f} ms; hit rate {t['hit_rate']:.3f}.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

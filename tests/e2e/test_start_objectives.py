"""Start-up objectives on a real vLLM (tiny model), the README's config-only gating: a start objective
is judged on the server's starts, once per start and side, and never makes a cell be measured."""

from __future__ import annotations

import json

import pytest

DEPLOY = """
[[slo]]
name = "starts fast"
startup_s = 0.5

[[slo]]
name = "chat at 8 users"
users = 8
prompt_tokens = 63
max_tokens = 16
e2e_p95_s = 600
"""


def test_start_objective_is_judged_on_each_sides_start_and_measures_only_the_selected_cell(
        pytester: pytest.Pytester) -> None:
    """No test file, `--llm-slo-file` alone, in an A/B session (a candidate restating a default): "starts
    fast" fails once per start (A and B), naming the start and its phases; only the 8-user cell is
    measured (the default matrix is not)."""
    (pytester.path / "deploy.toml").write_text(DEPLOY)
    result = pytester.runpytest_subprocess("--llm-slo-file=deploy.toml", "--llm-repeats=1",
                                           "--llm-candidate-server-arg=--max-num-seqs=256", "-p", "no:cacheprovider",
                                           timeout=900)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*objective 'starts fast'*missed*",
                                 "*start 1 of A: startup: observed * s, limit <= 0.5 s (process start -> /health *",
                                 "*start 1 of B: startup: observed * s, limit <= 0.5 s*"])
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    candidate = json.loads((pytester.path / "llmload-report" / "candidate" / "llmload.json").read_text())
    # Once per start, not once per cell. (A repeat measured again because it was invalid may start a side
    # once more when the sides take turns: that start is judged too.)
    starts = len(report["extra"]["server_starts"]) + len(candidate["extra"]["server_starts"])
    # Counted in the failure's report, not in pytest's short summary (which repeats the whole message
    # where pytest sees a CI environment, and cuts it to one line elsewhere).
    failure = out.split("short test summary info")[0]
    assert failure.count("startup: observed") == starts >= 2
    assert {(c["users"], c["prompt_tokens"], c["max_tokens"]) for c in report["cells"]} == {(8, 63, 16)}
    assert all(c["ok"] for c in report["cells"])

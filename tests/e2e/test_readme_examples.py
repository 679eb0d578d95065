"""Every Python example of the README runs, as written, against the default model on a real vLLM.

A ```python block whose first line reads `# NAME.py: run it with  pytest NAME.py ARGS` is saved as NAME.py
and run with ARGS; other blocks are saved as test_readme_N.py and run as they are. A ```toml block whose
first line reads `# NAME.toml, used with --llm-slo-file=NAME.toml` gates the same server. The shared
tiny-model server (conftest `tiny_server`) is attached with --llm-base-url, so one vLLM start serves all.

On a busy shared machine the tool may refuse to judge a cell (an invalid measurement: an error of its
own kind, never a pass or a failure), and a capacity probe may be too close to call (a skip). Such a run
says nothing about the example: it is run once more, and the test is skipped, naming why, if the
machine stays too busy. A failure, or any other error, fails the test at once.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCK = re.compile(r"^```(python|toml)\n(.*?)^```", re.M | re.S)
RUN_LINE = re.compile(r"^# (\S+\.py): run it with\s+pytest \1(.*)$")
SLO_LINE = re.compile(r"^# (\S+\.toml), used with --llm-slo-file=\1$")


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(README) if k == kind]


def _not_measured(result: pytest.RunResult) -> bool:
    """Only invalid measurements (errors so labelled) and skips stand between this run and a pass."""
    outcomes = result.parseoutcomes()
    invalid = sum(1 for line in result.stdout.lines if line.startswith("ERROR (invalid measurement)"))
    return (not outcomes.get("failed") and outcomes.get("errors", 0) == invalid
            and invalid + outcomes.get("skipped", 0) > 0)


def measured(run: Callable[[], pytest.RunResult]) -> pytest.RunResult:
    """The run, once more if the machine was too busy to measure it; a skip saying so if it still was."""
    for _ in range(2):
        result = run()
        if not _not_measured(result):
            return result
    reasons = [line.strip() for line in result.stdout.lines if line.strip().startswith("- ")][:6]
    pytest.skip("the machine was too busy to measure (invalid measurements):\n" + "\n".join(reasons))


def test_the_readme_has_examples() -> None:
    assert blocks("python") and blocks("toml")
    assert all(SLO_LINE.match(b.splitlines()[0]) for b in blocks("toml"))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_example_passes(pytester: pytest.Pytester, tiny_server, tiny_client_cpus: str, index: int) -> None:
    body = blocks("python")[index]
    m = RUN_LINE.match(body.splitlines()[0])
    name, args = (m.group(1), shlex.split(m.group(2))) if m else (f"test_readme_{index}.py", [])
    (pytester.path / name).write_text(body)
    result = measured(lambda: pytester.runpytest_subprocess(
        name, *args, f"--llm-base-url={tiny_server.base_url}", tiny_client_cpus, "-p", "no:cacheprovider", "-W", "error", "-rA",
        timeout=900))
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK and outcomes.get("passed", 0) > 0, result.stdout.str()
    assert not {"failed", "errors", "skipped"} & set(outcomes), outcomes


@pytest.mark.parametrize("index", range(len(blocks("toml"))))
def test_objectives_file_example_gates_a_deployment(pytester: pytest.Pytester, tiny_server, tiny_client_cpus: str,
                                                    index: int) -> None:
    """No test file: the objectives file alone is the session, one item per objective."""
    body = blocks("toml")[index]
    m = SLO_LINE.match(body.splitlines()[0])
    assert m is not None
    (pytester.path / m.group(1)).write_text(body)
    names = re.findall(r'^name = "(.*)"$', body, re.M)
    result = measured(lambda: pytester.runpytest_subprocess(
        f"--llm-slo-file={m.group(1)}", f"--llm-base-url={tiny_server.base_url}", tiny_client_cpus, "-p", "no:cacheprovider", "-v",
        "-rA", timeout=900))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=len(names))
    result.stdout.fnmatch_lines([f"*{m.group(1)}::{name} PASSED*" for name in names], consecutive=False)

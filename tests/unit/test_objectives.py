"""SLO keys, selection, verdicts and the failure messages users read."""

from __future__ import annotations

import pytest

from factories import cell
from pytest_llmload.errors import ConfigError, SLOViolation
from pytest_llmload.objectives import SLO, load_slo_file, parse_slo_line


def test_latency_limits_in_seconds_and_milliseconds() -> None:
    c = cell(ttft=0.1, itl=0.02)  # E2E = 0.1 + 99 * 0.02 = 2.08 s
    SLO.from_kwargs({"e2e_p95_s": 2.1, "ttft_p99_ms": 101}, where="t").check(c)
    with pytest.raises(SLOViolation) as exc:
        SLO.from_kwargs({"e2e_p95_s": 2.0}, where="t").check(c)
    text = str(exc.value)
    assert "users=4 prompt_tokens=31" in text and "e2e p95: observed 2.08 s, limit <= 2 s" in text
    assert "distribution: p50 2.08s" in text


def test_throughput_is_a_lower_limit() -> None:
    c = cell(ttft=0.1, itl=0.02)  # 100 tokens / 2.08 s = 48.1 tok/s per user
    SLO.from_kwargs({"tokens_per_s_per_user_min": 48}, where="t").check(c)
    with pytest.raises(SLOViolation, match=r"tokens_per_s_per_user min: observed 48.08 tok/s, limit >= 50"):
        c.assert_slo(tokens_per_s_per_user_min=50)


def test_failed_requests_miss_the_default_error_objective() -> None:
    c = cell(users=4, failed=1)
    with pytest.raises(SLOViolation, match=r"error_rate: observed 25.0%, limit <= 0.0%"):
        c.assert_slo(e2e_p95_s=100)
    c.assert_slo(e2e_p95_s=100, error_rate_max=0.25)


def test_a_cell_that_could_not_run_is_a_miss_with_its_cause() -> None:
    c = cell(users=2, failed=2, error="prompt longer than the context")
    with pytest.raises(SLOViolation, match="could not run: prompt longer than the context"):
        c.assert_slo(e2e_p95_s=100)


@pytest.mark.parametrize("kwargs", [{"e2e_p95": 1}, {"latency": 1}, {"ttft_p95_us": 1}, {"e2e_p95_s": "x"},
                                    {"users": 4}, {"e2e_p95_s": -1}, {"error_rate_max": 2}])
def test_bad_keys_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SLO.from_kwargs(kwargs, where="marker")


def test_selectors() -> None:
    slo = SLO.from_kwargs({"users": [8, 32], "prompt_tokens": 480, "e2e_p95_s": 1}, where="t")
    assert slo.applies_to(cell(users=32, prompt_tokens=480))
    assert not slo.applies_to(cell(users=16, prompt_tokens=480))
    assert not slo.applies_to(cell(users=32, prompt_tokens=31))


def test_ini_line_and_toml_file(tmp_path: pytest.TempPathFactory) -> None:
    slo = parse_slo_line("users=32 prompt_tokens=31,63 e2e_p95_s=20", "ini")
    assert slo.users == frozenset({32}) and slo.prompt_tokens == frozenset({31, 63})
    path = tmp_path / "deploy.toml"  # type: ignore[operator]
    path.write_text('[[slo]]\nname = "chat"\nusers = 32\ne2e_p95_s = 20\n[[slo]]\ntokens_per_s_per_user_min = 20\n')
    slos = load_slo_file(str(path))
    assert [s.name for s in slos] == ["chat", None]
    path.write_text("[[slo]]\nlatency = 3\n")
    with pytest.raises(ConfigError, match=r"deploy.toml \[\[slo\]\] #1: unknown objective 'latency'"):
        load_slo_file(str(path))


def test_an_invalid_cell_is_neither_a_pass_nor_a_miss() -> None:
    import dataclasses

    from pytest_llmload.errors import InvalidMeasurement, InvalidMeasurementWarning
    from pytest_llmload.objectives import observing

    bad = dataclasses.replace(cell(users=4), valid=False, invalid_reasons=("the measuring event loop stalled",))
    slo = SLO.from_kwargs({"e2e_p95_s": 1000}, where="test")
    with pytest.raises(InvalidMeasurement, match="invalid measurement: SLO e2e p95 <= 1000 s cannot be judged in "
                                                 "cell users=4 .*\n  - the measuring event loop stalled"):
        slo.check(bad)
    with pytest.raises(InvalidMeasurement):
        bad.assert_slo(e2e_p95_s=1000)
    with observing(allow_invalid=True), pytest.warns(InvalidMeasurementWarning, match="event loop stalled"):
        slo.check(bad)  # allowed: checked anyway, with a warning
    with observing(allow_invalid=True), pytest.warns(InvalidMeasurementWarning), pytest.raises(SLOViolation):
        SLO.from_kwargs({"e2e_p95_s": 0.001}, where="test").check(bad)


def test_start_up_objectives_read_the_server_start_of_the_cell() -> None:
    import dataclasses

    c = dataclasses.replace(cell(), extra={"server_start": {"startup_s": 21.5, "first_ttft_s": 0.12}})
    SLO.from_kwargs({"startup_s": 30, "first_ttft_ms": 150}, where="t").check(c)
    with pytest.raises(SLOViolation, match=r"startup: observed 21.5 s, limit <= 20 s"):
        c.assert_slo(startup_s=20)
    with pytest.raises(SLOViolation, match=r"first_ttft: observed 120 ms, limit <= 100 ms"):
        c.assert_slo(first_ttft_ms=100)
    with pytest.raises(SLOViolation, match=r"startup: not measured \(only a server this session started"):
        cell().assert_slo(startup_s=60)  # an attached server has no start-up time
    with pytest.raises(ConfigError, match="unknown objective 'startup'"):
        SLO.from_kwargs({"startup": 1}, where="t")


def test_a_start_objective_is_judged_per_start_and_its_cell_part_apart() -> None:
    from pytest_llmload.objectives import SLO

    mixed = SLO.from_kwargs({"users": 8, "startup_s": 5, "e2e_p95_s": 20}, where="deploy.toml")
    assert [o.metric for o in mixed.start_objectives] == ["startup"]
    cell_part = mixed.cell_part()
    assert cell_part is not None and [o.metric for o in cell_part.objectives] == ["e2e"]
    assert cell_part.users == frozenset({8})
    alone = SLO.from_kwargs({"name": "starts fast", "startup_s": 5}, where="deploy.toml")
    assert alone.cell_part() is None  # asks nothing of a cell: no cell is measured for it
    assert SLO.from_kwargs({"startup_s": 5, "error_rate_max": 0}, where="x").cell_part() is not None
    starts = [("start 1 of A", {"startup_s": 28.77, "health_s": 27.9, "first_ttft_s": 0.41}),
              ("start 1 of B", {"startup_s": 4.2, "health_s": 4.0, "first_ttft_s": 0.3})]
    (miss,) = alone.start_misses(starts)
    assert miss == ("start 1 of A: startup: observed 28.77 s, limit <= 5 s (process start -> /health 27.90 s "
                    "-> /v1/models 28.77 s -> first token +410 ms)")
    first_ttft = SLO.from_kwargs({"first_ttft_ms": 100}, where="x")
    assert [m.split(":")[0] for m in first_ttft.start_misses(starts)] == ["start 1 of A", "start 1 of B"]
    assert "observed n/a" in alone.start_misses([("start 1 of the server", {"startup_s": None})])[0]

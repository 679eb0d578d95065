"""The session's plan as pure functions: which cells a pass measures, which side goes first, the order
of start samples. No server, no session."""

from __future__ import annotations

from pytest_llmload.session.plan import (
    Counts,
    max_passes,
    next_pass,
    side_order,
    start_samples,
    wants_repeat,
)


def test_a_cell_is_measured_until_it_has_its_repeats_once_per_pass() -> None:
    assert [wants_repeat([Counts(made=m, results=m)], done=m, repeats=3) for m in range(4)] == [True, True, True,
                                                                                                 False]
    assert not wants_repeat([Counts(made=2, results=2)], done=1, repeats=3)  # measured in this pass already


def test_invalid_repeats_are_measured_again_up_to_twice_the_repeats_on_any_side() -> None:
    a_ok, b_short = Counts(made=3, results=3), Counts(made=3, results=2)
    assert wants_repeat([a_ok, b_short], done=3, repeats=3)
    assert not wants_repeat([Counts(made=6, results=3), Counts(made=6, results=2)], done=6, repeats=3)
    assert not wants_repeat([Counts(made=1, results=0)], done=1, repeats=1)  # one repeat: kept as it is
    assert max_passes(3) == 6 and max_passes(1) == 1


def test_a_pass_keeps_the_order_cells_were_first_measured_in() -> None:
    counts = {"c32": [Counts(1, 1)], "c8": [Counts(2, 2)], "c1": [Counts(1, 0)]}
    assert next_pass(["c32", "c8", "c1"], counts, done=1, repeats=3) == ["c32", "c1"]
    assert next_pass(["new"], {}, done=0, repeats=3) == ["new"]


def test_sides_alternate_by_cell_and_repeat() -> None:
    assert [side_order(cell, rep, ["A", "B"]) for cell, rep in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        ["A", "B"], ["B", "A"], ["B", "A"], ["A", "B"]]
    assert side_order(1, 0, ["A"]) == ["A"]


def test_start_samples_bring_every_launched_side_to_its_starts_alternating() -> None:
    assert start_samples(3, ["A", "B"]) == ["B", "A", "A", "B"]
    assert start_samples(1, ["A", "B"]) == [] and start_samples(3, ["A"]) == ["A", "A"]


def test_sides_taking_turns_go_a_b_b_a() -> None:
    from pytest_llmload.session.plan import block_side, side_wants

    assert "".join(block_side(i) for i in range(8)) == "ABBAABBA"
    assert side_wants(Counts(made=2, results=2), 3) and not side_wants(Counts(made=3, results=3), 3)
    assert side_wants(Counts(made=3, results=2), 3) and not side_wants(Counts(made=6, results=2), 3)


def test_the_ab_mode_follows_the_compute_the_sides_share() -> None:
    from pytest_llmload.session.plan import choose_ab_mode

    cpu = frozenset({"cpu"})
    assert choose_ab_mode("auto", [True, True], [cpu, cpu])[0] == "alternate"
    assert choose_ab_mode("auto", [True, True], [frozenset("01"), frozenset("23")])[0] == "together"
    assert choose_ab_mode("auto", [True, True], [None, None])[0] == "alternate"  # unknown: assume shared
    assert choose_ab_mode("together", [True, True], [cpu, cpu]) == ("together", "--llm-ab-mode together")
    mode, why = choose_ab_mode("alternate", [True, False], [cpu, None])
    assert mode == "together" and "side B is attached and cannot be stopped" in why and "may share" in why

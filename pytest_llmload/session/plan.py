"""What a session measures next: pure functions over cell keys and counts, no server.

The session (`core.LoadSession`) carries a plan out in a short loop; everything that decides (which
cells are measured again, in which order the sides go, how many starts are sampled) lives here, so it
is unit-tested with plain lists.

- Repeats: every cell gets `n` repeats, in passes over the cells in the order they were first measured
  (a cell's repeats are spread over the session, not measured back to back). A repeat that is invalid
  on a side is measured again, at most until the cell has `2n` measurements; one repeat (`n == 1`, no
  comparison) keeps an invalid cell as it is: reported invalid, not replaced.
- Side order (A/B): A first or B first, alternating with the cell and the repeat (A B, B A, ...), so a
  drift of the machine over the session falls on both sides alike.
- Start samples: with a gate on the server's start, each launched side is started again until it has
  `n` starts, the sides alternating.
- Sides that take turns (`--llm-ab-mode alternate`): only one side's server runs at a time; cells are
  measured in blocks, one pass over the cells per block, the sides' order A B B A A B ... from block to
  block (a drift of the machine falls on both sides alike; consecutive blocks of a side share its start).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Counts:
    """How far one side has come with one cell."""

    made: int = 0  # measurements recorded (of any outcome)
    results: int = 0  # measurements that count as results: valid ones, and failed ones (a failure is one too)


def max_passes(repeats: int) -> int:
    """The most passes a plan makes: `repeats`, and as many again for invalid repeats measured again."""
    return 2 * repeats if repeats > 1 else 1


def wants_repeat(sides: Sequence[Counts], done: int, repeats: int) -> bool:
    """Whether pass `done` (0-based) measures the cell (on every side): until it has `repeats`
    measurements, then, while a side lacks `repeats` results, up to `2 * repeats` measurements."""
    made = max((c.made for c in sides), default=0)
    if made > done:
        return False  # already measured in this pass
    if made < repeats:
        return True
    return 1 < repeats and made < 2 * repeats and any(c.results < repeats for c in sides)


def next_pass(keys: Sequence[K], counts: Mapping[K, Sequence[Counts]], done: int, repeats: int) -> list[K]:
    """The cells pass `done` measures, in the order given (the order the cells were first measured)."""
    return [k for k in keys if wants_repeat(counts.get(k, ()), done, repeats)]


def side_order(cell_index: int, repeat: int, sides: Sequence[str]) -> list[str]:
    """A B for even `cell_index + repeat`, B A for odd ones; a single side goes alone."""
    if len(sides) < 2 or (cell_index + repeat) % 2 == 0:
        return list(sides)
    return list(reversed(sides))


def start_samples(starts: int, sides: Sequence[str]) -> list[str]:
    """The order in which launched sides are started again so that each has `starts` starts in all (the
    session's first start of each counts): rounds alternating the sides (B A, A B, ...)."""
    order: list[str] = []
    for i in range(1, starts):
        order += list(sides) if i % 2 == 0 else list(reversed(sides))
    return order


def side_wants(counts: Counts, repeats: int) -> bool:
    """Whether one side still lacks repeats of a cell (sides taking turns count their own): fewer than
    `repeats` measurements, or fewer than `repeats` results while under `2 * repeats` measurements."""
    if counts.made < repeats:
        return True
    return 1 < repeats and counts.made < 2 * repeats and counts.results < repeats


BLOCK_PATTERN = ("A", "B", "B", "A")


def block_side(block: int) -> str:
    """The side of block `block` (0-based) when sides take turns: A B B A, repeated."""
    return BLOCK_PATTERN[block % len(BLOCK_PATTERN)]


def max_blocks(repeats: int) -> int:
    """A bound on the blocks of a session whose sides take turns: every side's `2 * repeats` passes."""
    return 4 * max_passes(repeats) + 1


def choose_ab_mode(asked: str, launched: Sequence[bool], devices: Sequence[frozenset[str] | None]) -> tuple[str, str]:
    """(mode, why) for an A/B session. `launched`: whether each side's server is started by the session;
    `devices`: what compute each side would use (GPU indices, or CPU cores as "cpuN"), None when unknown.
    Sides that share compute take turns; an attached server cannot be stopped, so its side stays up."""
    attached = [name for name, up in zip(("A", "B"), launched) if not up]
    if attached:
        why = f"side {' and '.join(attached)} is attached and cannot be stopped: both servers stay up"
        if asked == "alternate" or _overlap(devices):
            why += " although they may share compute (their numbers can disturb each other)"
        return "together", why
    if asked != "auto":
        return asked, f"--llm-ab-mode {asked}"
    if _overlap(devices):
        return "alternate", "both servers would use the same compute, so only one runs at a time"
    return "together", "the sides share no compute, so both stay up"


def _overlap(devices: Sequence[frozenset[str] | None]) -> bool:
    if len(devices) < 2 or devices[0] is None or devices[1] is None:
        return True  # unknown: assume shared, the safe side
    return bool(devices[0] & devices[1])

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

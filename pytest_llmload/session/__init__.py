"""One pytest-llmload session: settings -> sides (servers) -> plan -> recorded cells -> end of session.

`plugin.py` stays thin and hands everything here (pytest-benchmark's plugin/session split). Nothing in
this package imports pytest, so a plain script can drive a whole run the same way.

    side.py      Side: one deployment under test (its server, placement, runner, observers, run)
    plan.py      which cell next, which side first, repeats, start samples: pure functions
    core.py      LoadSession: the sides, the cells measured, the loop carrying out the plan; owns
                 every server until the session's very end
    fixtures.py  what tests hold: llm_load (LoadFixture), llm_matrix (Matrix), objective checks
    finish.py    the end: remaining repeats, start samples, comparisons, baselines, reports

Lifecycle: a server starts when a test (or objective) first needs it and stays up until `close()`,
which the plugin calls after the end of the session (`finish.finish_session`) has measured the last
repeat and written the reports. No fixture teardown stops a server.
"""

from __future__ import annotations

from .core import LoadSession, check_settings
from .side import PROBE, STARTS_KEY, Side

__all__ = ["PROBE", "STARTS_KEY", "LoadSession", "Side", "check_settings"]

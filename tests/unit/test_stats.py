"""The statistics behind a verdict: Student's t quantile (no scipy) and the Welch interval of a ratio."""

from __future__ import annotations

import math

import pytest

from pytest_llmload.gate.stats import incomplete_beta, ratio_interval, t_cdf, t_quantile


@pytest.mark.parametrize("df, expected", [(1, 6.3138), (2, 2.9200), (3, 2.3534), (4, 2.1318), (10, 1.8125),
                                          (30, 1.6973), (math.inf, 1.6449)])
def test_t_quantile_matches_the_printed_tables(df: float, expected: float) -> None:
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_is_symmetric_and_real_df_lies_between() -> None:
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(-1.5, 3) == pytest.approx(1 - t_cdf(1.5, 3))
    assert t_quantile(0.95, 2) > t_quantile(0.95, 2.5) > t_quantile(0.95, 3)
    assert t_quantile(0.975, 5) == pytest.approx(2.5706, abs=1e-4)


def test_incomplete_beta_known_values() -> None:
    assert incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248)  # 1 - sum binomial terms
    assert incomplete_beta(0.5, 0.5, 0.5) == pytest.approx(0.5)


def test_ratio_interval_needs_two_values_a_side() -> None:
    assert ratio_interval([1.0], [1.0, 1.1]) is None
    with pytest.raises(ValueError):
        ratio_interval([1.0, 0.0], [1.0, 1.1])


def test_ratio_interval_is_welch_on_logs() -> None:
    cur, base = [2.0, 2.2, 1.8], [1.0, 1.1, 0.9]
    iv = ratio_interval(cur, base)
    assert iv is not None
    lc, lb = [math.log(x) for x in cur], [math.log(x) for x in base]
    d = sum(lc) / 3 - sum(lb) / 3
    assert iv.ratio == pytest.approx(math.exp(d))
    def var(xs: list[float]) -> float:
        return sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)

    se = math.sqrt(var(lc) / 3 + var(lb) / 3)
    assert iv.df == pytest.approx(4.0, rel=0.01)  # equal spreads: n_c + n_b - 2
    assert iv.low == pytest.approx(math.exp(d - t_quantile(0.95, iv.df) * se))
    assert iv.high == pytest.approx(math.exp(d + t_quantile(0.95, iv.df) * se))


def test_no_spread_gives_a_point() -> None:
    iv = ratio_interval([2.0, 2.0], [1.0, 1.0])
    assert iv is not None and iv.low == iv.high == pytest.approx(2.0)


def test_t_pdf_integrates_to_the_cdf() -> None:
    from pytest_llmload.gate.stats import t_pdf

    steps = 4000
    area = sum(t_pdf(-1.0 + 2.0 * (k + 0.5) / steps, 3) for k in range(steps)) * 2.0 / steps
    assert area == pytest.approx(t_cdf(1.0, 3) - t_cdf(-1.0, 3), abs=1e-6)


def test_repeats_needed_is_the_smallest_n_whose_interval_clears_the_margin() -> None:
    from pytest_llmload.gate.stats import repeats_needed

    cur, base = [1.1, 1.3, 1.2], [1.0, 0.9, 1.1]
    lc, lb = [math.log(v) for v in cur], [math.log(v) for v in base]

    def var(xs: list[float]) -> float:
        return sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)

    spread, squares = var(lc) + var(lb), var(lc) ** 2 + var(lb) ** 2

    def width(n: int) -> float:
        return t_quantile(0.95, (n - 1) * spread**2 / squares) * math.sqrt(spread / n)

    for margin in (0.3, 0.1, 0.05, 0.03):
        n = repeats_needed(cur, base, margin)
        assert n is not None and width(n) < margin and (n == 2 or width(n - 1) >= margin)
    assert repeats_needed(cur, base, 0.001) is None  # beyond 100 repeats
    assert repeats_needed([1.0, 1.0], [2.0, 2.0], 0.01) == 2  # no spread: any two decide


def test_sessions_needed_cannot_beat_the_spread_between_sessions() -> None:
    from pytest_llmload.gate.stats import sessions_needed

    sessions = [[1.0], [1.1], [0.9]]
    s = math.sqrt(sum((math.log(v[0]) - sum(math.log(w[0]) for w in sessions) / 3) ** 2 for v in sessions) / 2)
    n = sessions_needed(sessions, 3 * s)
    assert n is not None and t_quantile(0.95, n - 1) * s * math.sqrt(1 + 1 / n) < 3 * s
    assert t_quantile(0.95, n - 2) * s * math.sqrt(1 + 1 / (n - 1)) >= 3 * s
    assert sessions_needed(sessions, 1.5 * s) is None  # under t(inf) = 1.645 spreads: no number of sessions

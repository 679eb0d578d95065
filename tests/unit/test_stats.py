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
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)  # noqa: E731
    se = math.sqrt(var(lc) / 3 + var(lb) / 3)
    assert iv.df == pytest.approx(4.0, rel=0.01)  # equal spreads: n_c + n_b - 2
    assert iv.low == pytest.approx(math.exp(d - t_quantile(0.95, iv.df) * se))
    assert iv.high == pytest.approx(math.exp(d + t_quantile(0.95, iv.df) * se))


def test_no_spread_gives_a_point() -> None:
    iv = ratio_interval([2.0, 2.0], [1.0, 1.0])
    assert iv is not None and iv.low == iv.high == pytest.approx(2.0)

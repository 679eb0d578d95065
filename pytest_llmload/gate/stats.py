"""The statistics of a verdict between repeats: a Welch t-interval of the ratio of two sets of values.

Each repeat of a cell gives one value of the gated statistic (its E2E p50, its total tokens/s...). The
values of the two sides are compared on a log scale, where a ratio becomes a difference and run-to-run
noise is closer to symmetric:

    d  = mean(log current) - mean(log baseline)
    se = sqrt(s_c^2 / n_c + s_b^2 / n_b)                 (Welch: the two sides may be noisier or not)
    df = se^4 / ((s_c^2/n_c)^2/(n_c-1) + (s_b^2/n_b)^2/(n_b-1))     (Welch-Satterthwaite)
    ratio in [exp(d - t*se), exp(d + t*se)],  t = the one-sided CONFIDENCE quantile of Student's t(df)

The spread that enters is the spread *between repeats*, which holds the noise a single run cannot show
(placement, caches, neighbours); within-run request-to-request spread only enters through it. With
fewer than two repeats on a side there is no spread to estimate, and `ratio_interval` returns None.

Against a baseline saved in other sessions, the spread that matters is the one *between sessions* (a
session differs from the next by its server start, its neighbours, the hour): `session_interval` treats
each baseline session's mean as one observation and asks whether this session's mean lies beyond them,

    d  = mean(log values now) - mean over sessions of mean(log values of the session)
    se = s_sessions * sqrt(1 + 1/S),  df = S - 1        (a prediction interval for one more session)

and needs at least two baseline sessions; with one, the spread between sessions is unknown.

Student's t quantile comes from the regularized incomplete beta function (a continued fraction,
Numerical Recipes' `betacf`), so the package needs no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # one-sided, for each of the two decisions (worse than the threshold, within it)
MIN_REPEATS = 2  # per side: one value has no spread


@dataclass(frozen=True, slots=True)
class RatioInterval:
    """current / baseline: the point estimate (ratio of geometric means) and its one-sided bounds."""

    ratio: float
    low: float
    high: float
    df: float  # Welch's degrees of freedom (inf when neither side varies)


def ratio_interval(current: Sequence[float], baseline: Sequence[float],
                   confidence: float = CONFIDENCE) -> RatioInterval | None:
    """The Welch interval of current/baseline from per-repeat values (all > 0); None with too few."""
    if min(len(current), len(baseline)) < MIN_REPEATS:
        return None
    if any(not (v > 0 and math.isfinite(v)) for v in (*current, *baseline)):
        raise ValueError("per-repeat values must be finite and above 0 to compare ratios")
    lc, lb = [math.log(v) for v in current], [math.log(v) for v in baseline]
    d = _mean(lc) - _mean(lb)
    vc, vb = _var(lc) / len(lc), _var(lb) / len(lb)
    se = math.sqrt(vc + vb)
    if se == 0.0:
        return RatioInterval(math.exp(d), math.exp(d), math.exp(d), math.inf)
    df = (vc + vb) ** 2 / ((vc**2 / (len(lc) - 1) if vc else 0.0) + (vb**2 / (len(lb) - 1) if vb else 0.0))
    t = t_quantile(confidence, df)
    return RatioInterval(math.exp(d), math.exp(d - t * se), math.exp(d + t * se), df)


def session_interval(current: Sequence[float], sessions: Sequence[Sequence[float]],
                     confidence: float = CONFIDENCE) -> RatioInterval | None:
    """current/baseline where the baseline is S sessions of repeats (all values > 0): the interval of
    this session's geometric mean against the spread of the baseline sessions' geometric means (a
    prediction interval, df = S - 1). None with no value now or fewer than MIN_REPEATS sessions."""
    sessions = [s for s in sessions if s]
    if not current or len(sessions) < MIN_REPEATS:
        return None
    if any(not (v > 0 and math.isfinite(v)) for v in (*current, *(v for s in sessions for v in s))):
        raise ValueError("per-repeat values must be finite and above 0 to compare ratios")
    now = _mean([math.log(v) for v in current])
    means = [_mean([math.log(v) for v in s]) for s in sessions]
    d = now - _mean(means)
    se = math.sqrt(_var(means) * (1.0 + 1.0 / len(means)))
    if se == 0.0:
        return RatioInterval(math.exp(d), math.exp(d), math.exp(d), math.inf)
    t = t_quantile(confidence, len(means) - 1)
    return RatioInterval(math.exp(d), math.exp(d - t * se), math.exp(d + t * se), float(len(means) - 1))


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    """The sample variance (n - 1)."""
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


# ----------------------------------------------------------------------------------- Student's t


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom (real df allowed)."""
    if df <= 0:
        raise ValueError("degrees of freedom must be above 0")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0.5 < p < 1), by bisection on `t_cdf` (to 1e-10)."""
    if not 0.5 <= p < 1.0:
        raise ValueError("p must be in [0.5, 1)")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # t(1) at 0.9999 is ~3183: a few doublings
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError("x must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h

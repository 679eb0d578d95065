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

When the interval straddles the threshold, `repeats_needed` (A/B) and `sessions_needed` (a baseline)
project the same formulas to more repeats or sessions at the observed spread and change: how many would
make the interval clear the threshold. A projection, not a promise: the next repeats have their own spread.

Student's t quantile comes from the regularized incomplete beta function (a continued fraction,
Numerical Recipes' `betacf`), so the package needs no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95  # one-sided, for each of the two decisions (worse than the threshold, within it)
MIN_REPEATS = 2  # per side: one value has no spread
MAX_PROJECTED = 100  # repeats (or sessions) beyond which a projection says "no number that is practical"


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


def half_width(interval: RatioInterval) -> float:
    """How far each bound lies from the estimate, on the log scale (the interval is symmetric there)."""
    return math.log(interval.high / interval.ratio)


def repeats_needed(current: Sequence[float], baseline: Sequence[float], margin: float,
                   confidence: float = CONFIDENCE, limit: int = MAX_PROJECTED) -> int | None:
    """Repeats per side at which Welch's bound lies `margin` (log scale, > 0: the distance between the
    estimate and the threshold) from the estimate, with the observed per-repeat spreads; None beyond `limit`."""
    spread = _var([math.log(v) for v in current]) + _var([math.log(v) for v in baseline])
    if spread == 0.0:
        return MIN_REPEATS
    if margin <= 0.0:
        return None
    squares = _var([math.log(v) for v in current]) ** 2 + _var([math.log(v) for v in baseline]) ** 2

    def enough(n: int) -> bool:
        df = (n - 1) * spread**2 / squares  # Welch-Satterthwaite with n values a side
        return t_quantile(confidence, df) * math.sqrt(spread / n) < margin

    return _smallest(enough, limit, start=math.ceil(spread * (NormalDist().inv_cdf(confidence) / margin) ** 2))


def sessions_needed(sessions: Sequence[Sequence[float]], margin: float, confidence: float = CONFIDENCE,
                    limit: int = MAX_PROJECTED) -> int | None:
    """Baseline sessions at which `session_interval`'s bound lies `margin` (log scale) from the estimate,
    with the observed spread between sessions; None when no number up to `limit` does (the spread between
    sessions itself is wider than the margin: more sessions cannot help)."""
    means = [_mean([math.log(v) for v in s]) for s in sessions if s]
    spread = math.sqrt(_var(means))
    if spread == 0.0:
        return MIN_REPEATS
    return _smallest(lambda n: t_quantile(confidence, n - 1) * spread * math.sqrt(1.0 + 1.0 / n) < margin, limit)


def _smallest(enough: Callable[[int], bool], limit: int, start: int = MIN_REPEATS) -> int | None:
    """The smallest n in [MIN_REPEATS, limit] for which `enough` (monotone in n) holds: steps doubling up
    from `start` (a lower bound: the normal approximation, t being wider), then bisection."""
    lo = min(max(start, MIN_REPEATS), limit + 1)
    step, hi = 1, lo
    while hi <= limit and not enough(hi):
        lo, hi, step = hi + 1, hi + step, step * 2
    if hi > limit:
        hi = limit
        if lo > limit or not enough(limit):
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


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
    """The t with P(T <= t) = p (0.5 <= p < 1), to 1e-10: Newton's method on `t_cdf`, kept inside a
    bracket that bisection narrows whenever a Newton step would leave it."""
    if not 0.5 <= p < 1.0:
        raise ValueError("p must be in [0.5, 1)")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # t(1) at 0.9999 is ~3183: a few doublings
        lo, hi = hi, hi * 2.0
    t = min(max(_t_guess(p, df), lo), hi)
    for _ in range(200):
        error = t_cdf(t, df) - p
        if error < 0:
            lo = t
        else:
            hi = t
        step = error / t_pdf(t, df)
        nxt = t - step
        if not lo < nxt < hi:
            nxt = (lo + hi) / 2.0
        if abs(nxt - t) < 1e-10 or hi - lo < 1e-10:
            return nxt
        t = nxt
    return t


def _t_guess(p: float, df: float) -> float:
    """Cornish-Fisher's expansion of t's quantile around the normal one: close for df >= 3."""
    z = NormalDist().inv_cdf(p)
    if math.isinf(df):
        return z
    return z + (z**3 + z) / (4.0 * df) + (5.0 * z**5 + 16.0 * z**3 + 3.0 * z) / (96.0 * df**2)


def t_pdf(t: float, df: float) -> float:
    """The density of Student's t with `df` degrees of freedom."""
    if math.isinf(df):
        return math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    log_norm = math.lgamma((df + 1.0) / 2.0) - math.lgamma(df / 2.0) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1.0) / 2.0 * math.log1p(t * t / df))


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

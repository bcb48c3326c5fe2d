"""Paired differences over seeds, with 95 % intervals (Student's t, n − 1 degrees of freedom).

When a reference and a candidate share seeds, each seed gives one difference (candidate − reference,
negative = candidate better); the interval is mean ± t(0.975, n − 1) · sd / √n over those differences.
The t quantile comes from a table (exact to the printed digits), so no statistics library is needed.
Ratios (epochs-to-match) are averaged as logarithms: the interval of the mean log ratio, exponentiated
(a geometric mean and its interval), since a ratio of 2 and one of 1/2 are symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

INTERVAL_RULE = "95 % t-interval over paired seeds (Student's t, n − 1 degrees of freedom)"
RATIO_RULE = "geometric mean over seeds; 95 % t-interval of the mean log ratio, exponentiated"

# t(0.975, df) for df = 1..30, then 40, 60, 120; beyond, interpolated in 1/df toward the normal 1.95996.
_T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
_T975_TAIL = [(40, 2.0211), (60, 2.0003), (120, 1.9799), (math.inf, 1.959964)]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (two-sided 95 %)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= 30:
        return _T975[df - 1]
    lo_df, lo_t = 30, _T975[-1]
    for hi_df, hi_t in _T975_TAIL:
        if df <= hi_df:
            x = (1 / lo_df - 1 / df) / (1 / lo_df - (0 if math.isinf(hi_df) else 1 / hi_df))
            return lo_t + x * (hi_t - lo_t)
        lo_df, lo_t = hi_df, hi_t
    return _T975_TAIL[-1][1]


def mean_interval(values: Sequence[float]) -> dict:
    """{"n", "mean", "sd", "ci95": [lo, hi] | None, "values"} of a sample (None interval below 2 values)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None, "values": []}
    mean = sum(xs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None, "values": xs}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "values": xs}


def paired_differences(reference: Mapping, candidate: Mapping) -> dict:
    """candidate − reference over the seeds both have (`{seed: value}` each): the mean, its interval,
    whether the interval excludes 0 and on which side, the seeds used."""
    seeds = [s for s in candidate if s in reference]
    diffs = [float(candidate[s]) - float(reference[s]) for s in seeds]
    stats = mean_interval(diffs)
    ci = stats["ci95"]
    verdict = "not enough seeds" if ci is None else (
        "candidate better" if ci[1] < 0 else "candidate worse" if ci[0] > 0 else "no difference resolved")
    return {"n_seeds": stats["n"], "seeds": seeds, "mean": stats["mean"], "sd": stats["sd"], "ci95": ci,
            "per_seed": diffs, "verdict": verdict, "interval": INTERVAL_RULE}


def ratio_interval(ratios: Mapping) -> dict:
    """A `{seed: ratio}` map summarised as a geometric mean with the exponentiated interval of its logs."""
    seeds = [s for s, r in ratios.items() if r is not None and r > 0]
    stats = mean_interval([math.log(float(ratios[s])) for s in seeds])
    ci = stats["ci95"]
    return {"n_seeds": stats["n"], "reached": f"{len(seeds)}/{len(ratios)}", "seeds": seeds,
            "mean": None if stats["mean"] is None else math.exp(stats["mean"]),
            "ci95": None if ci is None else [math.exp(ci[0]), math.exp(ci[1])],
            "per_seed": {str(s): ratios[s] for s in ratios}, "interval": RATIO_RULE}

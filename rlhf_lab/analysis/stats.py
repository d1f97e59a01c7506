"""Means and confidence intervals over seeds, per group of runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided confidence interval of the mean: ``(mean, low, high)``.

    Student's t with ``n - 1`` degrees of freedom (scipy), or the normal quantile (1.96 at 95%) when scipy
    is missing. NaNs are ignored; one value has no interval (``low`` and ``high`` are NaN).
    """
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return mean, math.nan, math.nan
    half = _critical_value(confidence, len(clean) - 1) * statistics.stdev(clean) / math.sqrt(len(clean))
    return mean, mean - half, mean + half


def ci_method() -> str:
    """How `mean_ci` computes its interval here: ``Student's t`` (scipy installed) or ``normal``."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return "normal"
    return "Student's t"


def _critical_value(confidence: float, dof: int) -> float:
    quantile = 0.5 + confidence / 2
    try:
        from scipy import stats
    except ImportError:
        return statistics.NormalDist().inv_cdf(quantile)
    return float(stats.t.ppf(quantile, dof))


def summarize(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    by: str | Sequence[str] = "objective",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean and CI of each metric per group: columns ``<by>, n, <metric>/mean, <metric>/low, <metric>/high``.

    Metrics missing from ``runs`` give NaN columns (a reward model has no generations, say).
    """
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for group, frame in runs.groupby(keys, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        row["n"] = len(frame)
        for metric in metrics:
            values = frame[metric] if metric in frame.columns else []
            row[f"{metric}/mean"], row[f"{metric}/low"], row[f"{metric}/high"] = mean_ci(values, confidence)
        rows.append(row)
    return pd.DataFrame(rows)

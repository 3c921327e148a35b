"""Per-seed paired t intervals and Holm's step-down correction for the pre-registered contrasts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """One contrast: the mean per-seed difference, its t statistic and two-sided p on n - 1 degrees of freedom."""

    mean: float
    std: float
    n: int
    t: float
    p: float

    def interval(self, alpha: float) -> tuple[float, float]:
        """The (1 - alpha) t interval of the mean difference."""
        from scipy import stats

        if self.n < 2:
            return (float("nan"), float("nan"))
        half = float(stats.t.ppf(1 - alpha / 2, self.n - 1)) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)


def paired(differences: Sequence[float]) -> Paired:
    """The paired t test of per-seed differences (arm minus arm on the same seed)."""
    from scipy import stats

    n = len(differences)
    mean = statistics.fmean(differences) if n else float("nan")
    std = statistics.stdev(differences) if n >= 2 else float("nan")
    if n < 2:
        return Paired(mean, std, n, float("nan"), float("nan"))
    if std == 0:  # every seed moved by the same amount: certain up to the seeds' own sampling
        return Paired(mean, std, n, math.copysign(math.inf, mean) if mean else 0.0, 0.0 if mean else 1.0)
    t = mean / (std / math.sqrt(n))
    return Paired(mean, std, n, t, float(2 * stats.t.sf(abs(t), n - 1)))


@dataclass(frozen=True)
class Adjusted:
    """Holm's verdict on one contrast: adjusted p, whether it is rejected at alpha, and the alpha its
    interval is drawn at (alpha / (m - rank + 1), held at the first non-rejected rank's for the rest, so an
    interval excludes 0 exactly when the contrast is rejected)."""

    p: float
    rejected: bool
    alpha: float


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[Adjusted]:
    """Holm's step-down procedure over ``pvalues`` (in input order): sorted ascending, the rank-i p-value
    is compared with alpha / (m - i + 1) until the first that exceeds it; adjusted p-values are the
    running maximum of (m - i + 1) p, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out: dict[int, Adjusted] = {}
    running, stopped_at = 0.0, None
    for rank, index in enumerate(order):
        level = alpha / (m - rank)
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        if stopped_at is None and not pvalues[index] <= level:
            stopped_at = level
        out[index] = Adjusted(p=running, rejected=stopped_at is None, alpha=stopped_at or level)
    return [out[i] for i in range(m)]

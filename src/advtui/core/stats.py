"""How much a compared number can be trusted: intervals and paired tests, from scipy.stats.

Torch-free. Accuracies are robust counts out of n examples, so their uncertainty is binomial:
each cell gets an exact (Clopper-Pearson) 95% interval. Two models evaluated on the same
examples are compared by the exact McNemar test: only the discordant examples (robust under one
model and not the other) carry information, and under "no difference" each is equally likely to
go either way, a binomial test at 1/2 on them (McNemar 1947; the exact form as in Fagerland,
Lydersen & Laake 2013, "The McNemar test for binary matched-pairs data"). That measures the
noise of which test examples were drawn, not which training seed was: a claim about defenses
rests on matched seeds, compared with a paired t-interval over seeds (and a Wilcoxon
signed-rank test once there are enough seeds for it to reach 5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
ALPHA = 1.0 - LEVEL
MIN_SEEDS_FOR_INTERVAL = 3  # below this a t-interval over seeds is too wide to say anything
# The exact two-sided Wilcoxon signed-rank test cannot go below 2 / 2**n: with 5 seeds its
# smallest p is 0.0625, so it can first reject at 5% with 6.
MIN_SEEDS_FOR_WILCOXON = 6


def _scipy_stats():
    """scipy.stats, imported on first use: it takes about 0.6 s, and every command that imports
    the comparison code (the whole CLI does) would otherwise pay it, ``advtui run`` included."""
    from scipy import stats

    return stats


def proportion_interval(count: int, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) interval of count/n, in percent; None without examples."""
    if n <= 0:
        return None
    ci = _scipy_stats().binomtest(int(count), int(n)).proportion_ci(confidence_level=level, method="exact")
    return 100.0 * ci.low, 100.0 * ci.high


def half_width(accuracy: float, n: int, level: float = LEVEL) -> float | None:
    """The larger half of the exact interval at ``accuracy`` (%) on n examples, in points."""
    interval = proportion_interval(round(accuracy * n / 100.0), n, level)
    if interval is None:
        return None
    return max(accuracy - interval[0], interval[1] - accuracy)


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact McNemar p-value (two-sided) from the discordant counts: a binomial test at 1/2."""
    discordant = int(gained) + int(lost)
    if discordant == 0:
        return 1.0
    return float(_scipy_stats().binomtest(int(gained), discordant, 0.5).pvalue)


@dataclass
class PairedDifference:
    """A against B on the examples both were evaluated on (accuracies and difference in points)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    gained: int  # robust under A, not under B
    lost: int  # robust under B, not under A
    low: float
    high: float
    p: float

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b,
                "difference": self.difference, "gained": self.gained, "lost": self.lost,
                "low": self.low, "high": self.high, "p": self.p}


def paired_difference(mask_a: np.ndarray, mask_b: np.ndarray, level: float = LEVEL) -> PairedDifference:
    """Difference of two robust masks over the same examples, with an exact interval and p.

    The interval is the exact one conditional on the discordant count m = b + c: the share of
    discordant examples won by A has a Clopper-Pearson interval [l, u], and the difference
    (b - c) / n = m/n * (2q - 1) maps it to [m/n (2l - 1), m/n (2u - 1)]. It excludes 0 exactly
    when the exact McNemar test rejects at the same level, so interval and p never disagree.
    """
    a, b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired masks must cover the same, non-empty set of examples")
    n = int(a.size)
    gained, lost = int((a & ~b).sum()), int((b & ~a).sum())
    discordant = gained + lost
    if discordant:
        ci = _scipy_stats().binomtest(gained, discordant).proportion_ci(confidence_level=level, method="exact")
        scale = 100.0 * discordant / n
        low, high = scale * (2 * ci.low - 1), scale * (2 * ci.high - 1)
    else:
        low = high = 0.0
    return PairedDifference(n, 100.0 * float(a.mean()), 100.0 * float(b.mean()), gained, lost,
                            low, high, mcnemar_p(gained, lost))


@dataclass
class SeedSummary:
    """Values over seeds (or per-seed differences): mean, std and, with enough seeds, an interval."""

    count: int
    mean: float
    std: float | None
    low: float | None  # t-interval (None with fewer than MIN_SEEDS_FOR_INTERVAL values)
    high: float | None
    wilcoxon_p: float | None = None  # for differences, with MIN_SEEDS_FOR_WILCOXON or more

    @property
    def interval_text(self) -> str:
        if self.low is None:
            return f"n/a ({self.count} seed{'s' if self.count != 1 else ''}; needs {MIN_SEEDS_FOR_INTERVAL})"
        return f"[{self.low:.2f}, {self.high:.2f}]"

    def to_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "low": self.low, "high": self.high,
                "wilcoxon_p": self.wilcoxon_p}


def over_seeds(values: list[float], level: float = LEVEL, differences: bool = False) -> SeedSummary:
    """Mean, sample std and Student-t interval of per-seed values; for paired differences
    (``differences``) also the exact Wilcoxon signed-rank p once there are enough seeds."""
    data = np.asarray(values, dtype=float)
    count = int(data.size)
    mean = float(data.mean()) if count else math.nan
    std = float(data.std(ddof=1)) if count > 1 else None
    low = high = None
    if std is not None and count >= MIN_SEEDS_FOR_INTERVAL:
        sem = std / math.sqrt(count)
        if sem > 0:
            low, high = (float(v) for v in _scipy_stats().t.interval(level, count - 1, loc=mean, scale=sem))
        else:
            low = high = mean
    wilcoxon = None
    if differences and count >= MIN_SEEDS_FOR_WILCOXON:
        wilcoxon = 1.0 if not np.any(data) else float(_scipy_stats().wilcoxon(data).pvalue)
    return SeedSummary(count, mean, std, low, high, wilcoxon)


def paired_t_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided paired t-test p over matched seeds; None with fewer than MIN_SEEDS_FOR_INTERVAL."""
    if len(a) != len(b) or len(a) < MIN_SEEDS_FOR_INTERVAL:
        return None
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(diffs - diffs.mean()):  # identical differences: t is infinite or undefined
        return 0.0 if np.any(diffs) else 1.0
    return float(_scipy_stats().ttest_rel(a, b).pvalue)

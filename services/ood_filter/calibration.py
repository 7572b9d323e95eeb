"""Thresholds and percentile scores set from real validation images, never the test split.

For one class, every detector's scores on the class's held-out real validation images
form its reference distribution. A candidate's *percentile* for a detector is its
mid-rank among those real scores, smoothed into (0, 1) like a conformal p-value; the
*combined score* is the lowest percentile over detectors, which puts detectors with
different units on one scale for ranking and AUROC. The minimum is the ranking form of
the all-must-pass rule below (every detector's threshold sits at the same level, so a
candidate passes them all about when its lowest percentile clears that level), and it
lets the one detector that sees a failure decide: the failures a filter must catch
(noise, blur, the wrong class) each show up in only some detectors, while the others
may even rate a blurred image as more typical than a real one. On the demo set an
arithmetic or geometric mean of percentiles ranked planted failures worse (pooled AUROC
0.91 against 0.94 for the minimum).

Thresholds: all detectors must pass (score >= threshold). Every detector's threshold
sits at the same *level* of its real validation scores:

* level ``a >= 0``: the lower ``a`` quantile of the scores;
* level ``a < 0``: below the lowest real score by ``|a|`` times the distance from the
  lowest score to the median (needed for tail classes, see below).

The level is the highest one at which at least ``target_keep_rate`` of real images are
expected to pass *all* detectors at once. Calibrating jointly matters: six detectors
each passing 95 % of real images would keep far fewer together. The keep rate is
estimated leave-one-out (each validation image against thresholds set from the others),
because in-sample it is optimistic exactly where it matters: with 20 real images of a
rare class, the threshold "lowest real score" passes 100 % of those 20 but only about
20/21 of new real images per detector. When patient (group) ids are given it is
leave-one-*group*-out: a patient's images resemble each other, and new candidates are
painted into other patients' images too.

**Pooled calibration (the extreme tail).** A class with too few validation images of
its own is calibrated on the validation images of all classes, each scored against its
own class model (:meth:`Detector.reference_scores`), with the same joint rule. Classes
differ in where their real images score (a classifier is less sure of a rare class),
so the pooled scores are shifted by the class's *shrunken offset*
(:func:`shrunken_class_offsets`): the distance of the class's own validation median
from the pooled median, multiplied by tau^2 / (tau^2 + v_c), with tau^2 how much class
medians really differ (estimated from all classes, method of moments) and v_c the
sampling variance of a median of the class's n_c images (pi/2 sigma^2 / n_c). With no
image of its own the shift is 0; with many it is the class's own median.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_LEVEL_GRID_STEPS = 400  # resolution of the search for the common level
_LOWEST_LEVEL = -3.0  # at most 3 min-to-median distances below the lowest real score


def percentile_scores(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Smoothed mid-rank of ``scores`` among ``reference``, with a tail below the lowest.

    Within the real range the percentile is (rank + 0.5) / (M + 1). Below the lowest
    real score it keeps falling, as ``0.5 / (M + 1) * exp(-d)`` with ``d`` the distance
    below the lowest score in units of the lowest-to-median distance, so candidates
    that all score below every real image (most planted failures) are still ranked
    against each other and against the rare real image down there, instead of tying.

    Args:
        reference: (M,) real validation scores of one detector and class, sorted ascending.
        scores: (N,) scores to place.

    Returns:
        (N,) float64 in (0, 1): about 0.5 at the median, (M + 0.5) / (M + 1) above every
        real image, under 0.5 / (M + 1) below every real image.
    """
    below = np.searchsorted(reference, scores, side="left")
    at_or_below = np.searchsorted(reference, scores, side="right")
    bottom = 0.5 / (len(reference) + 1.0)
    percentiles = ((below + at_or_below) / 2.0 + 0.5) / (len(reference) + 1.0)
    lowest = float(reference[0])
    spread = max(float(np.median(reference)) - lowest, 1e-12)
    distance_below = np.maximum(lowest - np.asarray(scores, dtype=np.float64), 0.0) / spread
    return np.where(scores < lowest, bottom * np.exp(-distance_below), percentiles)


def combined_score(percentiles: Mapping[str, np.ndarray]) -> np.ndarray:
    """Lowest percentile over detectors, (N,) float64 in (0, 1)."""
    return np.min(np.stack(list(percentiles.values())), axis=0)


def threshold_at_level(sorted_scores: np.ndarray, level: float) -> float:
    """The threshold at ``level`` (see module docstring) of ascending real scores (M,)."""
    if level >= 0.0:
        return float(sorted_scores[int(np.floor(level * (len(sorted_scores) - 1)))])
    lowest = sorted_scores[0]
    spread = float(np.median(sorted_scores) - lowest)
    return float(lowest - abs(level) * spread)


def _leave_one_out_thresholds(
    sorted_scores: np.ndarray, ranks: np.ndarray, level: float
) -> np.ndarray:
    """Per image i, the threshold at ``level`` computed from the other M - 1 scores.

    Args:
        sorted_scores: (M,) ascending scores.
        ranks: (M,) position of each image's score in ``sorted_scores``.
        level: The common level.

    Returns:
        (M,) thresholds; removing image i shifts order statistics at or above its rank.
    """
    if level >= 0.0:
        k = int(np.floor(level * (len(sorted_scores) - 2)))
        return np.where(k < ranks, sorted_scores[k], sorted_scores[min(k + 1, len(ranks) - 1)])
    lowest_other = np.where(ranks == 0, sorted_scores[1], sorted_scores[0])
    # The median hardly moves when one image is left out; use the full one.
    spread = float(np.median(sorted_scores)) - lowest_other
    return lowest_other - abs(level) * spread


class _GroupHoldOut:
    """Thresholds for each patient group computed from the other groups' scores.

    Images of one patient resemble each other, so leaving out one image while its
    siblings stay in overestimates how well new patients' images will pass. Built once
    per detector: row g holds the ascending scores of every image outside group g,
    padded with +inf.
    """

    def __init__(self, scores: np.ndarray, group_index: np.ndarray, n_groups: int) -> None:
        self.counts = np.array([np.sum(group_index != g) for g in range(n_groups)])
        self.others = np.full((n_groups, len(scores)), np.inf)
        self.medians = np.empty(n_groups)
        for g in range(n_groups):
            rest = np.sort(scores[group_index != g])
            self.others[g, : len(rest)] = rest
            self.medians[g] = np.median(rest)

    def thresholds(self, level: float) -> np.ndarray:
        """(G,) threshold at ``level`` for each held-out group."""
        if level >= 0.0:
            k = np.floor(level * (self.counts - 1)).astype(int)
            return self.others[np.arange(len(k)), k]
        lowest = self.others[:, 0]
        return lowest - abs(level) * (self.medians - lowest)


def joint_thresholds(
    validation_scores: Mapping[str, np.ndarray],
    target_keep_rate: float,
    groups: np.ndarray | None = None,
) -> tuple[dict[str, float], float, float, float]:
    """Per-detector thresholds so that ``target_keep_rate`` of real images pass them all.

    Args:
        validation_scores: Detector name -> (M,) scores of the class's real validation
            images (same M >= 2 and row order for every detector).
        target_keep_rate: Fraction of new real images that must pass, in (0, 1].
        groups: Optional (M,) patient/lesion ids; with two or more distinct ids the keep
            rate is estimated leave-one-*group*-out, which is what new patients see.

    Returns:
        (thresholds by detector, level, held-out keep rate, in-sample keep rate of the
        validation images).
    """
    if not 0.0 < target_keep_rate <= 1.0:
        raise ValueError(f"target_keep_rate must be in (0, 1], got {target_keep_rate}")
    names = list(validation_scores)
    matrix = np.stack([np.asarray(validation_scores[name], dtype=np.float64) for name in names])
    if matrix.shape[1] < 2:
        raise ValueError(f"calibration needs at least 2 validation images, got {matrix.shape[1]}")
    order = np.argsort(matrix, axis=1, kind="stable")
    sorted_matrix = np.take_along_axis(matrix, order, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(matrix.shape[1])[None, :], axis=1)

    group_ids = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)
    if group_ids is not None and len(group_ids[0]) >= 2:
        group_index = group_ids[1].reshape(-1)
        hold_outs = [_GroupHoldOut(row, group_index, len(group_ids[0])) for row in matrix]

        def leave_one_out_keep_rate(level: float) -> float:
            passes = [
                matrix[d] >= hold_out.thresholds(level)[group_index]
                for d, hold_out in enumerate(hold_outs)
            ]
            return float(np.mean(np.all(passes, axis=0)))

    else:

        def leave_one_out_keep_rate(level: float) -> float:
            passes = [
                matrix[d] >= _leave_one_out_thresholds(sorted_matrix[d], ranks[d], level)
                for d in range(len(names))
            ]
            return float(np.mean(np.all(passes, axis=0)))

    # Keep rate falls monotonically as the level rises: take the highest level on a
    # fine grid that still meets the target (or the lowest level if none does).
    grid = np.linspace(_LOWEST_LEVEL, 1.0 - target_keep_rate, _LEVEL_GRID_STEPS + 1)
    best_level, best_rate = float(grid[0]), leave_one_out_keep_rate(float(grid[0]))
    for level in grid[1:]:
        rate = leave_one_out_keep_rate(float(level))
        if rate < target_keep_rate:
            break
        best_level, best_rate = float(level), rate
    thresholds = {
        name: threshold_at_level(sorted_matrix[d], best_level) for d, name in enumerate(names)
    }
    in_sample = float(
        np.mean(np.all([matrix[d] >= thresholds[name] for d, name in enumerate(names)], axis=0))
    )
    return thresholds, best_level, best_rate, in_sample


def shrunken_class_offsets(scores: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Empirical-Bayes shift of each class's scores relative to the pooled median.

    Args:
        scores: (M,) one detector's scores of pooled real validation images, each
            against its own class model.
        labels: (M,) their classes.

    Returns:
        Class -> offset to add to the pooled scores to describe that class (see the
        module docstring); 0.0 when classes cannot be told apart from noise.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pooled_median = float(np.median(scores))
    classes, counts = np.unique(labels, return_counts=True)
    medians = {int(c): float(np.median(scores[labels == c])) for c in classes}
    with_spread = [int(c) for c, n in zip(classes, counts, strict=True) if n >= 2]
    if not with_spread:
        return dict.fromkeys(medians, 0.0)
    residuals = np.concatenate(
        [scores[labels == c] - medians[c] for c in with_spread]
    )  # within-class deviations
    sigma = 1.4826 * float(np.median(np.abs(residuals)))
    size = {int(c): int(n) for c, n in zip(classes, counts, strict=True)}

    def median_variance(c: int) -> float:
        return np.pi / 2.0 * sigma**2 / size[c]

    tau2 = max(
        0.0,
        float(
            np.mean([(medians[c] - pooled_median) ** 2 - median_variance(c) for c in with_spread])
        ),
    )
    if tau2 == 0.0:
        return dict.fromkeys(medians, 0.0)
    return {c: tau2 / (tau2 + median_variance(c)) * (medians[c] - pooled_median) for c in medians}

"""Thresholds and percentile scores set from real validation images, never the test split.

For one class, every detector's scores on the class's held-out real validation images
form its reference distribution. A candidate's *percentile* for a detector is the
fraction of those real scores at or below its own (mid-rank, in [0, 1]); the
*combined score* is the mean percentile over detectors, which puts detectors with
different units on one scale for ranking and AUROC.

Thresholds: all detectors must pass (score >= threshold). Each detector's threshold is
the same lower quantile ``a`` of its real validation scores, with ``a`` the largest value
for which at least ``target_keep_rate`` of the real validation images pass *all*
detectors at once. Calibrating jointly matters: six detectors each passing 95 % of real
images independently would keep only ~74 % of them together.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_QUANTILE_GRID_STEPS = 400  # resolution of the search for the common tail quantile


def percentile_scores(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of ``scores`` within ``reference``.

    Args:
        reference: (M,) real validation scores of one detector and class, sorted ascending.
        scores: (N,) scores to place.

    Returns:
        (N,) float64 in [0, 1]: 0 = below every real image, 1 = above every real image.
    """
    below = np.searchsorted(reference, scores, side="left")
    at_or_below = np.searchsorted(reference, scores, side="right")
    return (below + at_or_below) / (2.0 * len(reference))


def combined_score(percentiles: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean percentile over detectors, (N,) float64 in [0, 1]."""
    return np.mean(np.stack(list(percentiles.values())), axis=0)


def joint_thresholds(
    validation_scores: Mapping[str, np.ndarray], target_keep_rate: float
) -> tuple[dict[str, float], float, float]:
    """Per-detector thresholds so that ``target_keep_rate`` of real images pass them all.

    Args:
        validation_scores: Detector name -> (M,) scores of the class's real validation
            images (same M and row order for every detector).
        target_keep_rate: Fraction of real validation images that must pass, in (0, 1].

    Returns:
        (thresholds by detector, common tail quantile ``a`` in [0, 1), achieved keep rate).
    """
    if not 0.0 < target_keep_rate <= 1.0:
        raise ValueError(f"target_keep_rate must be in (0, 1], got {target_keep_rate}")
    names = list(validation_scores)
    matrix = np.stack([np.asarray(validation_scores[name], dtype=np.float64) for name in names])

    def at_quantile(level: float) -> tuple[np.ndarray, float]:
        # "lower" keeps thresholds on observed scores, so level 0 passes every real image.
        thresholds = np.quantile(matrix, level, axis=1, method="lower")
        keep_rate = float(np.mean(np.all(matrix >= thresholds[:, None], axis=0)))
        return thresholds, keep_rate

    best_level = 0.0
    best_thresholds, best_rate = at_quantile(0.0)
    # Keep rate falls monotonically as the common quantile rises: take the highest
    # level on a fine grid that still meets the target.
    for level in np.linspace(0.0, 1.0 - target_keep_rate, _QUANTILE_GRID_STEPS + 1)[1:]:
        thresholds, keep_rate = at_quantile(float(level))
        if keep_rate < target_keep_rate:
            break
        best_level, best_thresholds, best_rate = float(level), thresholds, keep_rate
    return (
        {name: float(value) for name, value in zip(names, best_thresholds, strict=True)},
        best_level,
        best_rate,
    )

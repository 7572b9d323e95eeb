"""Selection rules: which scored candidates go into the curated set, and why not the rest.

Three rules, all of which always reject near copies first:

* ``calibrated`` (default): keep every candidate that passes all per-detector thresholds
  set from real validation images (see :mod:`services.ood_filter.calibration`).
* ``keep_fraction`` gamma (the paper's post-selection, gamma ~ 0.2-0.6): keep the best
  ``round(gamma * N)`` candidates by combined score.
* ``target_count`` n: keep the best ``n`` by combined score.

For the two ranked rules ``apply_thresholds`` also requires the thresholds to pass, so a
count is never met by admitting images that do not look real (fewer may be kept; the
caller generates more). A rejected candidate's reason follows the precedence
``near_copy`` > ``off_class`` > ``ood``; falling below the keep cut counts as ``ood``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.ood_filter.records import Reason


@dataclass(frozen=True)
class SelectionRule:
    """How to pick the curated set; build with the class methods."""

    keep_fraction: float | None = None
    target_count: int | None = None
    apply_thresholds: bool = True

    def __post_init__(self) -> None:
        if self.keep_fraction is not None and self.target_count is not None:
            raise ValueError("give keep_fraction or target_count, not both")
        if self.keep_fraction is not None and not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], got {self.keep_fraction}")
        if self.target_count is not None and self.target_count < 0:
            raise ValueError(f"target_count must be >= 0, got {self.target_count}")

    @classmethod
    def calibrated(cls) -> SelectionRule:
        """Keep all candidates that pass every calibrated threshold."""
        return cls()

    @classmethod
    def best_fraction(cls, gamma: float, *, apply_thresholds: bool = False) -> SelectionRule:
        """Keep the best ``gamma`` of the candidates by combined score."""
        return cls(keep_fraction=gamma, apply_thresholds=apply_thresholds)

    @classmethod
    def best_count(cls, count: int, *, apply_thresholds: bool = True) -> SelectionRule:
        """Keep the best ``count`` candidates by combined score."""
        return cls(target_count=count, apply_thresholds=apply_thresholds)

    def describe(self) -> str:
        """Short label stored with the outcome, e.g. ``keep_fraction=0.4``."""
        if self.keep_fraction is not None:
            label = f"keep_fraction={self.keep_fraction:g}"
        elif self.target_count is not None:
            label = f"target_count={self.target_count}"
        else:
            return "calibrated"
        return label + (" within thresholds" if self.apply_thresholds else "")


def decide(
    rule: SelectionRule,
    *,
    combined: np.ndarray,
    is_copy: np.ndarray,
    off_class: np.ndarray,
    ood: np.ndarray,
) -> tuple[np.ndarray, list[Reason]]:
    """Apply ``rule`` to N scored candidates.

    Args:
        rule: The selection rule.
        combined: (N,) combined scores in [0, 1], higher = better.
        is_copy: (N,) bool, memorisation guard fired.
        off_class: (N,) bool, the class-probability threshold failed.
        ood: (N,) bool, some other detector threshold failed.

    Returns:
        (kept (N,) bool, reason per candidate).
    """
    passes = ~(off_class | ood)
    if rule.keep_fraction is None and rule.target_count is None:
        kept = ~is_copy & passes
    else:
        eligible = ~is_copy & (passes if rule.apply_thresholds else True)
        if rule.keep_fraction is not None:
            n_keep = int(round(rule.keep_fraction * len(combined)))
        else:
            n_keep = int(rule.target_count or 0)
        candidates = np.flatnonzero(eligible)
        # Stable sort on the negated score: ties go to the earlier candidate.
        best = candidates[np.argsort(-combined[candidates], kind="stable")[:n_keep]]
        kept = np.zeros(len(combined), dtype=bool)
        kept[best] = True
    reasons = [
        Reason.NEAR_COPY
        if copy
        else Reason.KEPT
        if keep
        else Reason.OFF_CLASS
        if wrong_class
        else Reason.OOD
        for copy, keep, wrong_class in zip(is_copy, kept, off_class, strict=True)
    ]
    return kept, reasons

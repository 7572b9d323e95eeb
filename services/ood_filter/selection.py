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

Any rule can also be held to what a synthesis request asked (:meth:`SelectionRule.capped`):
going down the candidates the rule would keep, best combined score first, a candidate is
left out as

* ``surplus`` once ``max_kept`` are kept (the class has its count);
* ``duplicate`` when its pHash lies within ``duplicate_bits`` of a kept one's (one
  image twice is no more data, and a mode-collapsed generator would fill a class);
* ``background`` when its source image already carries ``ceil(max_kept / B) + 1`` kept
  candidates, B the distinct backgrounds the class's candidates were painted into (one
  background must not fill a class).

A candidate left out for diversity makes room for the next best, so the count is met
from the rest where it can be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from services.ood_filter.hashing import HASH_BITS
from services.ood_filter.records import Reason


@dataclass(frozen=True)
class SelectionRule:
    """How to pick the curated set; build with the class methods."""

    keep_fraction: float | None = None
    target_count: int | None = None
    apply_thresholds: bool = True
    #: At most this many kept; the next best are ``surplus``.
    max_kept: int | None = None
    #: pHash distance (bits) at or below which a candidate duplicates a better kept one.
    duplicate_bits: int | None = None
    #: Cap each source background at ``ceil(max_kept / backgrounds) + 1`` kept candidates.
    background_share: bool = False

    def __post_init__(self) -> None:
        if self.keep_fraction is not None and self.target_count is not None:
            raise ValueError("give keep_fraction or target_count, not both")
        if self.keep_fraction is not None and not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], got {self.keep_fraction}")
        if self.target_count is not None and self.target_count < 0:
            raise ValueError(f"target_count must be >= 0, got {self.target_count}")
        if self.max_kept is not None and self.max_kept < 0:
            raise ValueError(f"max_kept must be >= 0, got {self.max_kept}")
        if self.duplicate_bits is not None and not 0 <= self.duplicate_bits <= HASH_BITS:
            raise ValueError(
                f"duplicate_bits must be in [0, {HASH_BITS}], got {self.duplicate_bits}"
            )

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

    def capped(
        self, max_kept: int, *, duplicate_bits: int | None = None, background_share: bool = False
    ) -> SelectionRule:
        """This rule, keeping at most ``max_kept`` and, when asked, diverse ones."""
        return replace(
            self,
            max_kept=max_kept,
            duplicate_bits=duplicate_bits,
            background_share=background_share,
        )

    def describe(self) -> str:
        """Short label stored with the outcome, e.g. ``keep_fraction=0.4``."""
        if self.keep_fraction is not None:
            label = f"keep_fraction={self.keep_fraction:g}"
        elif self.target_count is not None:
            label = f"target_count={self.target_count}"
        else:
            label = "calibrated"
        if label != "calibrated" and self.apply_thresholds:
            label += " within thresholds"
        if self.max_kept is not None:
            label += f", at most {self.max_kept}"
        if self.duplicate_bits is not None:
            label += f", no duplicates within {self.duplicate_bits} pHash bits"
        if self.background_share:
            label += ", background share"
        return label

    @property
    def ranked(self) -> bool:
        """Whether the rule keeps a number of candidates (a fraction or a count)."""
        return self.keep_fraction is not None or self.target_count is not None


def decide(
    rule: SelectionRule,
    *,
    combined: np.ndarray,
    is_copy: np.ndarray,
    off_class: np.ndarray,
    ood: np.ndarray,
    phashes: np.ndarray | None = None,
    backgrounds: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Reason]]:
    """Apply ``rule`` to N scored candidates of one class.

    Args:
        rule: The selection rule.
        combined: (N,) combined scores in [0, 1], higher = better.
        is_copy: (N,) bool, memorisation guard fired.
        off_class: (N,) bool, the class-probability threshold failed.
        ood: (N,) bool, some other detector threshold failed.
        phashes: (N,) uint64 pHashes of the candidates; needed with ``duplicate_bits``.
        backgrounds: (N,) int id of each candidate's source image, < 0 for none;
            needed with ``background_share``.

    Returns:
        (kept (N,) bool, reason per candidate).
    """
    n = len(combined)
    if rule.duplicate_bits is not None and (phashes is None or len(phashes) != n):
        raise ValueError("a rule with duplicate_bits needs one pHash per candidate")
    if rule.background_share and (backgrounds is None or len(backgrounds) != n):
        raise ValueError("a rule with background_share needs one background per candidate")
    passes = ~(off_class | ood)
    eligible = ~is_copy & (passes if rule.apply_thresholds or not rule.ranked else True)
    if rule.keep_fraction is not None:
        rank_cut: int | None = int(round(rule.keep_fraction * n))
    else:
        rank_cut = rule.target_count
    candidates = np.flatnonzero(eligible)
    # Stable sort on the negated score: ties go to the earlier candidate.
    order = candidates[np.argsort(-combined[candidates], kind="stable")]
    kept = np.zeros(n, dtype=bool)
    left_out: dict[int, Reason] = {}
    share = _background_share(rule, backgrounds, len(order))
    per_background: dict[int, int] = {}
    kept_hashes = np.zeros(len(order), dtype=np.uint64)
    n_kept = 0
    for position, row in enumerate(order):
        if rule.max_kept is not None and n_kept >= rule.max_kept:
            left_out.update((int(r), Reason.SURPLUS) for r in order[position:])
            break
        if rank_cut is not None and n_kept >= rank_cut:
            break  # below the rule's own cut: rejected as off_class or ood below
        if rule.duplicate_bits is not None and n_kept:
            assert phashes is not None
            distances = np.bitwise_count(np.bitwise_xor(kept_hashes[:n_kept], phashes[row]))
            if int(distances.min()) <= rule.duplicate_bits:
                left_out[int(row)] = Reason.DUPLICATE
                continue
        background = -1 if backgrounds is None else int(backgrounds[row])
        if share is not None and background >= 0:
            if per_background.get(background, 0) >= share:
                left_out[int(row)] = Reason.BACKGROUND
                continue
            per_background[background] = per_background.get(background, 0) + 1
        if phashes is not None:
            kept_hashes[n_kept] = phashes[row]
        kept[row] = True
        n_kept += 1
    reasons = [
        Reason.NEAR_COPY
        if copy
        else Reason.KEPT
        if keep
        else left_out.get(row, Reason.OFF_CLASS if wrong_class else Reason.OOD)
        for row, (copy, keep, wrong_class) in enumerate(zip(is_copy, kept, off_class, strict=True))
    ]
    return kept, reasons


def _background_share(
    rule: SelectionRule, backgrounds: np.ndarray | None, n_eligible: int
) -> int | None:
    """Most kept candidates one source background may carry, or None for no cap."""
    if not rule.background_share or backgrounds is None:
        return None
    distinct = len(np.unique(backgrounds[backgrounds >= 0]))
    if distinct == 0:
        return None
    wanted = n_eligible if rule.max_kept is None else rule.max_kept
    return math.ceil(wanted / distinct) + 1

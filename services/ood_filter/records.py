"""Plain records of a filtering run, ready for the lead to store in Postgres.

Nothing here knows about the database: every field is a builtin (``str``, ``int``,
``float``, ``bool``, ``dict``) so ``dataclasses.asdict`` gives a JSON-able row.

Score convention (all detectors): **higher = more in-distribution / more acceptable**.
A candidate passes a detector when ``score >= threshold``.

Reason precedence, when several checks fail at once, is
``near_copy`` > ``off_class`` > ``ood``: a memorised copy of a patient's image is a
privacy leak whatever else is true of it, an image of the wrong class is a label error
even if it looks in-distribution, and ``ood`` covers every remaining detector failure
(including "ranked below the keep cut" under a keep-fraction or target-count rule).
A candidate that passes every check can still be left out to keep the curated set what
was asked (see :mod:`.selection`): ``surplus`` (the class already has its count),
``duplicate`` (a near duplicate of a better kept candidate) or ``background`` (its
source image already carries its share of the class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class FilterMode(StrEnum):
    """How a class is filtered (see :mod:`.filter`).

    * ``per_class``: its own training images fit its statistics and its own validation
      images set its thresholds.
    * ``pooled``: too few images of its own for that; its detectors borrow strength from
      every class (the tied covariance, nearest-neighbour distances and sharpness spread
      of all classes) and its thresholds come from all classes' validation images, each
      scored against its own class model, shifted towards what the class's own
      validation images show, as far as their number warrants.
    * ``skipped``: cannot be filtered at all (no real training image, or too few
      validation images even pooled); the reason says which.
    """

    PER_CLASS = "per_class"
    POOLED = "pooled"
    SKIPPED = "skipped"


class Reason(StrEnum):
    """Why a candidate was kept or rejected (stored verbatim)."""

    KEPT = "kept"
    NEAR_COPY = "near_copy"
    OFF_CLASS = "off_class"
    OOD = "ood"
    #: Passed, but the class already holds the count asked (better ones were kept).
    SURPLUS = "surplus"
    #: Passed, but its pHash is within a few bits of a better kept candidate of its class.
    DUPLICATE = "duplicate"
    #: Passed, but its source background already carries its share of the class.
    BACKGROUND = "background"


@dataclass(frozen=True)
class CandidateRecord:
    """The verdict on one candidate image.

    Attributes:
        index: Position of the candidate in the scored stream (0-based, in input order).
        class_index: The class the candidate was generated for.
        scores: Detector name -> raw score (higher = more in-distribution; units differ
            per detector, e.g. negative squared Mahalanobis distance, probability).
        thresholds: Detector name -> the threshold the raw score was compared with.
        percentiles: Detector name -> the score's smoothed percentile among the class's
            real validation images, in (0, 1) (0.5 = scores like a median real image).
        combined_score: Lowest of ``percentiles`` over detectors, in (0, 1); used for
            ranking and AUROC (the ranking form of the all-must-pass rule).
        nearest_train_similarity: Cosine similarity of the candidate's features to the
            nearest real training image, in [-1, 1].
        nearest_train_index: Row of that training image in the fitted training set.
        copy_similarity_threshold: Similarity at or above which the candidate counts as a
            near copy (from the training images' own nearest-neighbour similarities).
        phash_distance: Smallest Hamming distance (bits, 0-64) between the candidate's
            perceptual hash and any training image's hash in any of its 8 flips/rotations.
        phash_threshold: Hamming distance at or below which the candidate is a near copy.
        kept: Whether the candidate is in the curated set.
        reason: Why (see module docstring for precedence).
        class_probability: The classifier's probability of the class the candidate was
            generated for, in [0, 1] (prior-corrected like the ``class_probability``
            detector; computed even when that detector is not used).
        below_chance: ``class_probability`` is under chance (1 / number of classes):
            a kept one looks off-class to the classifier although it passed.
    """

    index: int
    class_index: int
    scores: dict[str, float]
    thresholds: dict[str, float]
    percentiles: dict[str, float]
    combined_score: float
    nearest_train_similarity: float
    nearest_train_index: int
    copy_similarity_threshold: float
    phash_distance: int
    phash_threshold: int
    kept: bool
    reason: Reason
    class_probability: float = float("nan")
    below_chance: bool = False


@dataclass(frozen=True)
class ClassPlan:
    """How the fitted filter serves one class, and why.

    Attributes:
        class_index: The class.
        filter_mode: ``per_class``, ``pooled`` or ``skipped`` (see :class:`FilterMode`).
        reason: One sentence a user can act on (counts and what they fall short of).
        n_train: Real training images of the class.
        n_validation: Real validation images of the class.
    """

    class_index: int
    filter_mode: FilterMode
    reason: str
    n_train: int
    n_validation: int


@dataclass(frozen=True)
class ClassCalibration:
    """The thresholds one class was filtered with, and how they were set.

    Attributes:
        class_index: The class.
        thresholds: Detector name -> threshold on the raw score.
        level: The common level of each detector's real-validation scores used as its
            threshold: a lower quantile when >= 0, an extension below the lowest real
            score (in min-to-median distances) when < 0.
        target_keep_rate: Fraction of new real images asked to pass every detector.
        expected_keep_rate: Leave-one-out estimate of that fraction on the validation
            images (>= target unless even the lowest level cannot reach it).
        validation_keep_rate: In-sample fraction of validation images that pass.
        n_train: Real training images of the class the detectors were fitted on.
        n_validation: Real validation images of the class.
        filter_mode: ``per_class`` (thresholds from the class's own validation images)
            or ``pooled`` (from all classes' validation images, see :class:`FilterMode`).
        n_reference: Validation images the thresholds were set from: ``n_validation``
            per class, the size of the pooled reference set when pooled.
        class_offsets: Pooled mode only: detector name -> shift added to the pooled
            reference scores, the class's own validation median's distance from the
            pooled median shrunk by how much its few images can tell (0 without any).
    """

    class_index: int
    thresholds: dict[str, float]
    level: float
    target_keep_rate: float
    expected_keep_rate: float
    validation_keep_rate: float
    n_train: int
    n_validation: int
    filter_mode: str = FilterMode.PER_CLASS.value
    n_reference: int = 0
    class_offsets: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterOutcome:
    """Every candidate's record plus counts; the curated set is ``kept_indices``.

    Attributes:
        class_index: The class the candidates were generated for.
        rule: Human-readable selection rule, e.g. ``"calibrated"`` or ``"keep_fraction=0.4"``.
        calibration: Thresholds in force.
        records: One record per candidate, in input order.
        counts: Reason -> number of candidates (every reason present).
    """

    class_index: int
    rule: str
    calibration: ClassCalibration
    records: list[CandidateRecord]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def kept_indices(self) -> list[int]:
        """Indices (input order) of the kept candidates."""
        return [record.index for record in self.records if record.kept]

"""OOD filter worker: calibrated post-selection with a memorisation guard.

Library part (no database, Celery or storage): embed real and candidate images with the
dataset's fine-tuned classifier (:func:`embed_images`), fit an :class:`OodFilter` on the
real training split, calibrate it on the real validation split, score candidates in
bounded-memory chunks and decide keep/reject with a reason per candidate. Scores follow
one convention: higher = more in-distribution. :func:`evaluate_ood_filter` measures the
filter on your own data against planted bad candidates (the extreme tail, classes with
too few real images of their own, separately).

Every class is served in the best mode it can have: ``per_class`` (its own statistics
and thresholds), ``pooled`` (borrowing strength from all classes, for classes with a
handful of images) or ``skipped`` with a reason (:meth:`OodFilter.plan`).
"""

from services.ood_filter.evaluation import LabelledImages, evaluate_ood_filter
from services.ood_filter.features import (
    FeatureExtractor,
    ImageEmbeddings,
    OodFilterCanceled,
    embed_images,
    iter_image_batches,
)
from services.ood_filter.filter import CandidateScores, OodFilter, OodFilterConfig
from services.ood_filter.records import (
    CandidateRecord,
    ClassCalibration,
    ClassPlan,
    FilterMode,
    FilterOutcome,
    Reason,
)
from services.ood_filter.selection import SelectionRule

__all__ = [
    "CandidateRecord",
    "CandidateScores",
    "ClassCalibration",
    "ClassPlan",
    "FeatureExtractor",
    "FilterMode",
    "FilterOutcome",
    "ImageEmbeddings",
    "LabelledImages",
    "OodFilter",
    "OodFilterCanceled",
    "OodFilterConfig",
    "Reason",
    "SelectionRule",
    "embed_images",
    "evaluate_ood_filter",
    "iter_image_batches",
]

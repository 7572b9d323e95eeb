"""Built-in evaluation: how well the filter separates real images from planted failures.

Run it on your own data (arrays in, a JSON-able report out)::

    report = evaluate_ood_filter(classifier, train, validation, heldout, class_names=names)

Three disjoint sets of **real** images are needed: ``train`` (what the detectors and the
classifier were fitted on), ``validation`` (sets thresholds) and ``heldout`` (plays the
part of good candidates and is the source of planted bad ones; a second part of your
validation split works; never the test split). Split by patient where a patient has
several images, or held-out images will look like copies of training images.

For each class that can be filtered the report gives:

* ``auroc``: detector name (and ``combined``) -> AUROC of real held-out images (positive)
  against the planted out-of-distribution candidates (``other_class``, ``noise``,
  ``blur``, ``colour_shift``; negative), from raw scores. Copies are left out of AUROC:
  they are in-distribution by construction and are the copy guard's job.
* ``combined_auroc_by_kind``: the combined score's AUROC against each planted kind.
* ``real_keep_rate``: fraction of held-out real images kept at the default (calibrated)
  threshold, copy guard included.
* ``rejection_rate``: fraction of each planted kind rejected at the default threshold,
  and ``near_copy_rate``: fraction flagged ``near_copy`` (the point for copies).

``overall`` gives the mean over classes, the pooled combined AUROC (percentiles are
comparable across classes) and pooled keep and rejection rates. ``tail`` gives the same
for the classes filtered in ``pooled`` mode alone (too few real images for statistics
of their own; each ``per_class`` entry names its ``filter_mode``), so a good head does
not hide a poor tail; it is None when every class was filtered per class. To measure
the extreme tail on your own data, cut some classes down with :func:`shrink_classes`
(and fit the feature model on what is left).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from services.ood_filter.features import (
    FeatureExtractor,
    OodFilterCanceled,
    embed_images,
    iter_image_batches,
)
from services.ood_filter.filter import CandidateScores, OodFilter, OodFilterConfig
from services.ood_filter.planted import COPY_KINDS, OOD_KINDS, plant_bad_candidates
from services.ood_filter.records import Reason

COMBINED = "combined"


@dataclass(frozen=True)
class LabelledImages:
    """Real images with labels: images (N, H, W[, C]) uint8, labels (N,) int, and
    optionally (N,) patient/lesion ids (used to calibrate leave-one-patient-out)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None


def shrink_classes(
    train: LabelledImages,
    validation: LabelledImages,
    heldout: LabelledImages,
    sizes: Mapping[int, tuple[int, int]],
    *,
    seed: int = 0,
) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """Simulate the extreme tail: keep only a few training and validation images of some
    classes; images of theirs from other patients join the held-out set.

    Args:
        train, validation, heldout: Disjoint real sets (see :func:`evaluate_ood_filter`).
        sizes: Class -> (training images to keep, validation images to keep).
        seed: Which images are kept.

    Returns:
        (train, validation, heldout) with those classes cut down. A dropped image whose
        patient (group) still has a kept image is discarded rather than held out, so the
        held-out set never holds a sibling of a training image.
    """
    rng = np.random.default_rng(seed)
    keep = {"train": np.ones(len(train.labels), bool), "val": np.ones(len(validation.labels), bool)}
    moved: list[tuple[LabelledImages, np.ndarray]] = []
    for class_index, (n_train, n_validation) in sizes.items():
        kept_groups: set[Any] = set()
        dropped: list[tuple[LabelledImages, np.ndarray]] = []
        for name, images, n_keep in (("train", train, n_train), ("val", validation, n_validation)):
            rows = np.flatnonzero(images.labels == class_index)
            chosen = rng.choice(rows, size=min(n_keep, len(rows)), replace=False)
            rest = np.setdiff1d(rows, chosen)
            keep[name][rest] = False
            if images.groups is not None:
                kept_groups |= set(images.groups[chosen].tolist())
            dropped.append((images, rest))
        for images, rest in dropped:
            if images.groups is not None:
                rest = rest[[group not in kept_groups for group in images.groups[rest]]]
            moved.append((images, rest))

    def part(images: LabelledImages, rows: np.ndarray) -> LabelledImages:
        return LabelledImages(
            images.images[rows],
            images.labels[rows],
            None if images.groups is None else images.groups[rows],
        )

    pieces = [heldout, *(part(images, rows) for images, rows in moved)]
    groups = (
        None
        if any(piece.groups is None for piece in pieces)
        else np.concatenate([piece.groups for piece in pieces if piece.groups is not None])
    )
    extended = LabelledImages(
        np.concatenate([piece.images for piece in pieces]),
        np.concatenate([piece.labels for piece in pieces]),
        groups,
    )
    return (
        part(train, np.flatnonzero(keep["train"])),
        part(validation, np.flatnonzero(keep["val"])),
        extended,
    )


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """AUROC of positive-vs-negative scores (higher = positive); None if a side is empty."""
    if len(positive) == 0 or len(negative) == 0:
        return None
    truth = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    return float(roc_auc_score(truth, np.concatenate([positive, negative])))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _score_all(
    ood_filter: OodFilter,
    extractor: FeatureExtractor,
    images: np.ndarray,
    class_index: int,
    batch_size: int,
) -> CandidateScores:
    chunks = list(
        ood_filter.score_batches(extractor, iter_image_batches(images, batch_size), class_index)
    )
    return CandidateScores.concatenate(chunks)


def evaluate_ood_filter(
    extractor: FeatureExtractor,
    train: LabelledImages,
    validation: LabelledImages,
    heldout: LabelledImages,
    *,
    config: OodFilterConfig | None = None,
    class_names: Sequence[str] | None = None,
    classes: Sequence[int] | None = None,
    planted_per_kind: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fit the filter and measure it against planted bad candidates (see module docstring).

    Args:
        extractor: The feature model (fine-tuned on ``train``).
        train: Real training images and labels.
        validation: Real validation images and labels (thresholds).
        heldout: Further real images and labels, disjoint from both.
        config: Filter settings; defaults when None.
        class_names: Names by class index, for the report.
        classes: Classes to evaluate; default every class in ``train`` (those with too
            few real images are listed under ``skipped`` with the reason).
        planted_per_kind: Planted candidates per kind and class (fewer if the sources are
            smaller).
        batch_size: Images per feature-extraction batch.
        seed: Seed for which images are planted and for the noise.
        progress: ``progress(done_classes, total_classes)``.
        should_cancel: Polled between classes; True raises :class:`OodFilterCanceled`.

    Returns:
        A JSON-able dict: ``config``, ``per_class`` (by class name), ``overall``,
        ``skipped`` (class -> why it was not evaluated).
    """
    config = config or OodFilterConfig()
    rng = np.random.default_rng(seed)
    ood_filter = OodFilter.fit(
        embed_images(extractor, iter_image_batches(train.images, batch_size)),
        train.labels,
        embed_images(extractor, iter_image_batches(validation.images, batch_size)),
        validation.labels,
        config,
        class_names=class_names,
        validation_groups=validation.groups,
    )
    requested = list(classes) if classes is not None else [int(c) for c in np.unique(train.labels)]
    per_class: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    arrays: dict[str, _ClassArrays] = {}
    for done, class_index in enumerate(requested):
        if should_cancel is not None and should_cancel():
            raise OodFilterCanceled(f"evaluation canceled after {done} classes")
        name = class_names[class_index] if class_names is not None else str(class_index)
        try:
            ood_filter.resolve_class(class_index)
        except ValueError as error:  # skipped by the filter (no training image...): say so
            skipped[name] = str(error)
            continue
        real_images = heldout.images[heldout.labels == class_index]
        if len(real_images) < 2:
            skipped[name] = f"{len(real_images)} held-out real image(s); need at least 2"
            continue
        try:
            real = _score_all(ood_filter, extractor, real_images, class_index, batch_size)
        except ValueError as error:
            skipped[name] = str(error)
            continue
        planted = plant_bad_candidates(
            real_images,
            heldout.images[heldout.labels != class_index],
            train.images[train.labels == class_index],
            per_kind=planted_per_kind,
            rng=rng,
        )
        bad = {
            kind: _score_all(ood_filter, extractor, images, class_index, batch_size)
            for kind, images in planted.items()
        }
        ood_bad = [bad[kind] for kind in OOD_KINDS if kind in bad]
        auroc = {
            detector: _auroc(
                real.scores[detector], np.concatenate([b.scores[detector] for b in ood_bad])
            )
            for detector in real.scores
        }
        auroc[COMBINED] = _auroc(real.combined, np.concatenate([b.combined for b in ood_bad]))
        real_outcome = ood_filter.decide(real)
        kept = {"real": np.array([record.kept for record in real_outcome.records])}
        near_copy = {"real": np.array([r.reason == Reason.NEAR_COPY for r in real_outcome.records])}
        for kind, scored in bad.items():
            outcome = ood_filter.decide(scored)
            kept[kind] = np.array([record.kept for record in outcome.records])
            near_copy[kind] = np.array([r.reason == Reason.NEAR_COPY for r in outcome.records])
        arrays[name] = _ClassArrays(
            real_combined=real.combined,
            bad_combined=np.concatenate([b.combined for b in ood_bad]),
            kept=kept,
            near_copy=near_copy,
        )
        calibration = real_outcome.calibration
        per_class[name] = {
            "class_index": class_index,
            "filter_mode": calibration.filter_mode,
            "n_train": calibration.n_train,
            "n_validation": calibration.n_validation,
            "n_reference": calibration.n_reference,
            "n_heldout_real": len(real_images),
            "n_planted": {kind: len(images) for kind, images in planted.items()},
            "thresholds": calibration.thresholds,
            "threshold_level": calibration.level,
            "expected_keep_rate": calibration.expected_keep_rate,
            "auroc": auroc,
            "combined_auroc_by_kind": {
                kind: _auroc(real.combined, bad[kind].combined) for kind in OOD_KINDS if kind in bad
            },
            "real_keep_rate": float(kept["real"].mean()),
            "real_reasons": real_outcome.counts,
            "rejection_rate": {
                kind: float(1.0 - values.mean()) for kind, values in kept.items() if kind != "real"
            },
            "near_copy_rate": {
                kind: float(values.mean()) for kind, values in near_copy.items() if kind != "real"
            },
        }
        if progress is not None:
            progress(done + 1, len(requested))
    detector_names = [*config.detectors, COMBINED]
    tail = [name for name, entry in per_class.items() if entry["filter_mode"] == "pooled"]
    return {
        "config": {
            "detectors": list(config.detectors),
            "knn_k": config.knn_k,
            "target_keep_rate": config.target_keep_rate,
            "min_train_per_class": config.min_train_per_class,
            "min_validation_per_class": config.min_validation_per_class,
            "class_prior_correction": config.class_prior_correction,
            "copy_similarity_percentile": config.copy_similarity_percentile,
            "copy_similarity_margin": config.copy_similarity_margin,
            "max_phash_distance": config.max_phash_distance,
            "planted_per_kind": planted_per_kind,
            "seed": seed,
        },
        "per_class": per_class,
        "overall": _aggregate(per_class, arrays, list(per_class), detector_names),
        "tail": _aggregate(per_class, arrays, tail, detector_names) if tail else None,
        "skipped": skipped,
    }


@dataclass(frozen=True)
class _ClassArrays:
    """What one class contributes to pooled figures: combined scores of real held-out
    and planted OOD candidates, and kept / near-copy flags by kind (``real`` included)."""

    real_combined: np.ndarray
    bad_combined: np.ndarray
    kept: dict[str, np.ndarray]
    near_copy: dict[str, np.ndarray]


def _aggregate(
    per_class: dict[str, Any],
    arrays: dict[str, _ClassArrays],
    names: list[str],
    detector_names: list[str],
) -> dict[str, Any]:
    """Means over ``names`` and pooled rates over their candidates."""
    entries = [per_class[name] for name in names]
    parts = [arrays[name] for name in names]

    def pooled(kind: str, field: str) -> np.ndarray | None:
        values = [getattr(part, field)[kind] for part in parts if kind in getattr(part, field)]
        return np.concatenate(values) if values else None

    kinds = sorted({kind for part in parts for kind in part.kept if kind != "real"})
    real_kept = pooled("real", "kept")
    copies = [pooled(kind, "near_copy") for kind in COPY_KINDS]
    present = [values for values in copies if values is not None]
    return {
        "classes_evaluated": len(names),
        "classes": names,
        "mean_auroc": {
            detector: _mean([entry["auroc"].get(detector) for entry in entries])
            for detector in detector_names
        },
        "pooled_combined_auroc": _auroc(
            np.concatenate([part.real_combined for part in parts]),
            np.concatenate([part.bad_combined for part in parts]),
        )
        if parts
        else None,
        "real_keep_rate": float(real_kept.mean()) if real_kept is not None else None,
        "min_class_real_keep_rate": min(
            (entry["real_keep_rate"] for entry in entries), default=None
        ),
        "rejection_rate": {
            kind: float(1.0 - values.mean())
            for kind in kinds
            if (values := pooled(kind, "kept")) is not None
        },
        "near_copy_rate": {
            kind: float(values.mean())
            for kind in ["real", *kinds]
            if (values := pooled(kind, "near_copy")) is not None
        },
        "copy_rejection_rate": float(np.concatenate(present).mean()) if present else None,
    }

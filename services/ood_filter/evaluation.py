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
comparable across classes) and pooled keep and rejection rates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    pooled_real: list[np.ndarray] = []
    pooled_bad: list[np.ndarray] = []
    pooled_kept: dict[str, list[np.ndarray]] = {"real": []}
    pooled_near_copy: dict[str, list[np.ndarray]] = {}
    for done, class_index in enumerate(requested):
        if should_cancel is not None and should_cancel():
            raise OodFilterCanceled(f"evaluation canceled after {done} classes")
        name = class_names[class_index] if class_names is not None else str(class_index)
        try:
            ood_filter.resolve_class(class_index)
        except ValueError as error:  # too few real images to fit or calibrate: say so
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
        real_kept = np.array([record.kept for record in real_outcome.records])
        rejection_rate: dict[str, float] = {}
        near_copy_rate: dict[str, float] = {}
        for kind, scored in bad.items():
            outcome = ood_filter.decide(scored)
            kept = np.array([record.kept for record in outcome.records])
            near_copy = np.array([record.reason == Reason.NEAR_COPY for record in outcome.records])
            rejection_rate[kind] = float(1.0 - kept.mean())
            near_copy_rate[kind] = float(near_copy.mean())
            pooled_kept.setdefault(kind, []).append(kept)
            pooled_near_copy.setdefault(kind, []).append(near_copy)
        pooled_kept["real"].append(real_kept)
        pooled_near_copy.setdefault("real", []).append(
            np.array([record.reason == Reason.NEAR_COPY for record in real_outcome.records])
        )
        pooled_real.append(real.combined)
        pooled_bad.extend(b.combined for b in ood_bad)
        calibration = real_outcome.calibration
        per_class[name] = {
            "class_index": class_index,
            "n_train": calibration.n_train,
            "n_validation": calibration.n_validation,
            "n_heldout_real": len(real_images),
            "n_planted": {kind: len(images) for kind, images in planted.items()},
            "thresholds": calibration.thresholds,
            "threshold_level": calibration.level,
            "expected_keep_rate": calibration.expected_keep_rate,
            "auroc": auroc,
            "combined_auroc_by_kind": {
                kind: _auroc(real.combined, bad[kind].combined) for kind in OOD_KINDS if kind in bad
            },
            "real_keep_rate": float(real_kept.mean()),
            "real_reasons": real_outcome.counts,
            "rejection_rate": rejection_rate,
            "near_copy_rate": near_copy_rate,
        }
        if progress is not None:
            progress(done + 1, len(requested))
    detector_names = [*config.detectors, COMBINED]
    overall: dict[str, Any] = {
        "classes_evaluated": len(per_class),
        "mean_auroc": {
            detector: _mean([entry["auroc"][detector] for entry in per_class.values()])
            for detector in detector_names
        },
        "pooled_combined_auroc": _auroc(np.concatenate(pooled_real), np.concatenate(pooled_bad))
        if pooled_real
        else None,
        "real_keep_rate": float(np.concatenate(pooled_kept["real"]).mean())
        if pooled_kept["real"]
        else None,
        "min_class_real_keep_rate": min(
            (entry["real_keep_rate"] for entry in per_class.values()), default=None
        ),
        "rejection_rate": {
            kind: float(1.0 - np.concatenate(values).mean())
            for kind, values in pooled_kept.items()
            if kind != "real"
        },
        "near_copy_rate": {
            kind: float(np.concatenate(values).mean()) for kind, values in pooled_near_copy.items()
        },
    }
    copies = [
        np.concatenate(pooled_near_copy[kind]) for kind in COPY_KINDS if kind in pooled_near_copy
    ]
    overall["copy_rejection_rate"] = float(np.concatenate(copies).mean()) if copies else None
    return {
        "config": {
            "detectors": list(config.detectors),
            "knn_k": config.knn_k,
            "target_keep_rate": config.target_keep_rate,
            "copy_similarity_percentile": config.copy_similarity_percentile,
            "copy_similarity_margin": config.copy_similarity_margin,
            "max_phash_distance": config.max_phash_distance,
            "planted_per_kind": planted_per_kind,
            "seed": seed,
        },
        "per_class": per_class,
        "overall": overall,
        "skipped": skipped,
    }

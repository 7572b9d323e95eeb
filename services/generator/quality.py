"""Quality probes of generated images against held-out real images, per class.

Two numbers per class:

* Frechet distance between feature distributions of generated and real images, using
  torchmetrics' ``FrechetInceptionDistance`` with a caller-supplied feature network
  (e.g. the penultimate layer of a classifier trained on the dataset): no Inception
  weights are downloaded, and features of a network trained on the modality are more
  meaningful for medical images than ImageNet Inception features anyway.
* Accuracy of a classifier trained on real data on the generated images: the fraction of
  images of class c that it assigns to c (does the painted lesion read as its class?).

And the copy rate per class: how many generated images the synthesis filter's
memorisation guard would reject as near copies of a training image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from services.ood_filter.hashing import perceptual_hashes
from services.ood_filter.memorisation import MemorisationGuard

# Fewer samples than this make the covariance estimate meaningless (rank-deficient).
MIN_SAMPLES_FOR_FID = 2


class FeatureNetwork(torch.nn.Module):
    """Adapts any feature module to torchmetrics' FID: uint8 (N, H, W, C) handling aside,
    it receives float (N, C, H, W) in [0, 1] and must return (N, num_features)."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], num_features: int
                 ) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features  # read by torchmetrics instead of a dummy pass

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).flatten(1)


@dataclass(frozen=True)
class ClassQuality:
    """Quality of the generated images of one class.

    Attributes:
        class_name: the class.
        n_generated, n_real: images compared.
        frechet_distance: FD in feature space (lower is closer), None when a side has
            fewer than two images.
        classifier_accuracy: fraction (0-1) of generated images the real-data classifier
            assigns to this class, None when no image was generated.
        mean_class_probability: mean predicted probability of this class (0-1).
    """

    class_name: str
    n_generated: int
    n_real: int
    frechet_distance: float | None
    classifier_accuracy: float | None
    mean_class_probability: float | None


def per_class_frechet_distance(
    real_images: np.ndarray,
    real_labels: np.ndarray,
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    feature_network: FeatureNetwork,
    num_classes: int,
    *,
    batch_size: int = 64,
) -> list[float | None]:
    """Frechet distance per class between generated and real images.

    Args:
        real_images, generated_images: uint8 (N, H, W, C).
        real_labels, generated_labels: (N,) int class ids.
        feature_network: a :class:`FeatureNetwork` (float [0, 1] NCHW -> (N, F)).
        num_classes: classes to report (ids 0..num_classes-1).

    Returns:
        One entry per class, None where either side has < 2 images.
    """
    distances: list[float | None] = []
    for class_id in range(num_classes):
        real = real_images[np.asarray(real_labels) == class_id]
        fake = generated_images[np.asarray(generated_labels) == class_id]
        if len(real) < MIN_SAMPLES_FOR_FID or len(fake) < MIN_SAMPLES_FOR_FID:
            distances.append(None)
            continue
        metric = FrechetInceptionDistance(feature=feature_network, normalize=True)
        with torch.no_grad():
            for images, is_real in ((real, True), (fake, False)):
                for start in range(0, len(images), batch_size):
                    metric.update(_to_float_nchw(images[start:start + batch_size]), real=is_real)
            distances.append(float(metric.compute()))
    return distances


def per_class_classifier_accuracy(
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    predict_proba: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
) -> tuple[list[float | None], list[float | None]]:
    """Per-class accuracy and mean probability of the requested class on generated images.

    Args:
        generated_images: uint8 (N, H, W, C).
        generated_labels: (N,) requested class ids.
        predict_proba: images -> (N, num_classes) class probabilities.

    Returns:
        ``(accuracy, mean_probability)``, one entry per class (None when absent).
    """
    labels = np.asarray(generated_labels)
    if len(labels) == 0:
        return [None] * num_classes, [None] * num_classes
    proba = np.asarray(predict_proba(generated_images))
    if proba.shape != (len(labels), num_classes):
        raise ValueError(f"predict_proba returned shape {proba.shape}, expected "
                         f"({len(labels)}, {num_classes})")
    predicted = proba.argmax(axis=1)
    accuracy: list[float | None] = []
    probability: list[float | None] = []
    for class_id in range(num_classes):
        selected = labels == class_id
        if not selected.any():
            accuracy.append(None)
            probability.append(None)
            continue
        accuracy.append(float((predicted[selected] == class_id).mean()))
        probability.append(float(proba[selected, class_id].mean()))
    return accuracy, probability


def per_class_copy_rate(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    features: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
) -> list[float | None]:
    """Per class, the fraction (0-1) of generated images the synthesis filter's
    memorisation guard would reject as near copies of a real training image.

    The guard (:class:`services.ood_filter.memorisation.MemorisationGuard`, its defaults)
    is fitted on the training images, whose copies are the privacy leak; a class whose
    copy rate is high is memorised, whatever its other figures say.

    Args:
        train_images, generated_images: uint8 (N, H, W, C), one size.
        train_labels: (N,) class ids of the training images.
        generated_labels: (M,) requested class ids.
        features: images -> (N, D) features (the probe classifier's).

    Returns:
        One entry per class, None where no image of it was generated.
    """
    labels = np.asarray(generated_labels)
    if len(labels) == 0 or len(train_images) == 0:
        return [None] * num_classes
    guard = MemorisationGuard().fit(
        features(train_images), np.asarray(train_labels),
        perceptual_hashes(train_images, all_orientations=True),
    )
    is_copy = guard.check(features(generated_images),
                          perceptual_hashes(generated_images, all_orientations=False)).is_copy
    return [float(is_copy[labels == c].mean()) if (labels == c).any() else None
            for c in range(num_classes)]


def quality_report(
    real_images: np.ndarray,
    real_labels: np.ndarray,
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    class_names: Sequence[str],
    *,
    feature_network: FeatureNetwork | None = None,
    predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[ClassQuality]:
    """Both probes per class; either may be skipped by passing None."""
    n = len(class_names)
    distances: list[float | None] = [None] * n
    accuracy: list[float | None] = [None] * n
    probability: list[float | None] = [None] * n
    if feature_network is not None:
        distances = per_class_frechet_distance(real_images, real_labels, generated_images,
                                               generated_labels, feature_network, n)
    if predict_proba is not None:
        accuracy, probability = per_class_classifier_accuracy(generated_images,
                                                              generated_labels, predict_proba, n)
    real_labels, generated_labels = np.asarray(real_labels), np.asarray(generated_labels)
    return [
        ClassQuality(name, int((generated_labels == c).sum()), int((real_labels == c).sum()),
                     distances[c], accuracy[c], probability[c])
        for c, name in enumerate(class_names)
    ]


def _to_float_nchw(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    if tensor.ndim == 3:
        tensor = tensor[..., None]
    return tensor.permute(0, 3, 1, 2)

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.generator.quality import (
    FeatureNetwork,
    per_class_classifier_accuracy,
    per_class_copy_rate,
    quality_report,
)


def _mean_colour_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3): per-channel mean, a transparent feature space."""
    return images.mean(dim=(2, 3))


def _images(rng: np.random.Generator, n: int, centre: float) -> np.ndarray:
    return rng.normal(centre, 20, size=(n, 8, 8, 3)).clip(0, 255).astype(np.uint8)


def test_frechet_distance_is_small_for_matching_and_large_for_shifted_images() -> None:
    rng = np.random.default_rng(0)
    real = np.concatenate([_images(rng, 40, 100), _images(rng, 40, 180)])
    real_labels = np.repeat([0, 1], 40)
    # Class 0 generated like its real images; class 1 generated far too dark.
    fake = np.concatenate([_images(rng, 40, 100), _images(rng, 40, 60)])
    report = quality_report(real, real_labels, fake, real_labels, ["a", "b"],
                            feature_network=FeatureNetwork(_mean_colour_features, 3))
    close, far = report[0].frechet_distance, report[1].frechet_distance
    assert close is not None and far is not None
    assert close < 1e-3 < far and far > 100 * close
    assert report[0].n_generated == 40 and report[1].n_real == 40


def test_classifier_accuracy_per_class_and_missing_classes() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0, 1, 0], [0.6, 0.4, 0]])
    accuracy, probability = per_class_classifier_accuracy(np.zeros((5, 4, 4, 3), np.uint8),
                                                          labels, lambda _: proba, 3)
    assert accuracy[0] == pytest.approx(0.5) and accuracy[1] == pytest.approx(2 / 3)
    assert accuracy[2] is None and probability[2] is None
    assert probability[1] == pytest.approx((0.9 + 1.0 + 0.4) / 3)
    with pytest.raises(ValueError, match="predict_proba returned shape"):
        per_class_classifier_accuracy(np.zeros((5, 4, 4, 3), np.uint8), labels,
                                      lambda _: proba[:, :2], 3)


def test_frechet_distance_needs_two_images_per_side() -> None:
    rng = np.random.default_rng(1)
    report = quality_report(_images(rng, 5, 100), np.zeros(5, int), _images(rng, 1, 100),
                            np.zeros(1, int), ["a"],
                            feature_network=FeatureNetwork(_mean_colour_features, 3))
    assert report[0].frechet_distance is None and report[0].n_generated == 1


def test_copy_rate_per_class_counts_generated_copies_of_training_images() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    train_labels = np.repeat([0, 1], 12)
    # Class 0 generated as training images (two of them mirrored), class 1 as new images.
    copies = train[:6].copy()
    copies[:2] = copies[:2, :, ::-1]
    generated = np.concatenate([copies, rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)])
    generated_labels = np.repeat([0, 1], 6)

    def flat_pixels(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) - 127.5

    rates = per_class_copy_rate(train, train_labels, generated, generated_labels, flat_pixels, 3)
    assert rates == [1.0, 0.0, None]  # class 2: nothing generated

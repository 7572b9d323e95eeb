"""Each detector separates in-class features from shifted ones; higher = in-distribution."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from services.ood_filter.detectors import (
    DETECTOR_TYPES,
    Detector,
    RelativeMahalanobisDetector,
    build_detector,
)
from services.ood_filter.features import ImageEmbeddings
from services.ood_filter.sharpness import log_laplacian_energy
from tests.ood_filter.conftest import GaussianWorld, as_embeddings, labels_for, make_images


def _auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    truth = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    return float(roc_auc_score(truth, np.r_[inliers, outliers]))


@pytest.mark.parametrize("name", ["mahalanobis", "knn"])
def test_feature_detectors_separate_class_from_shifted_features(
    name: str, world: GaussianWorld
) -> None:
    rng = np.random.default_rng(0)
    train = world.sample(rng, labels_for(60), n_hash_columns=8)
    detector = build_detector(name, knn_k=5).fit(train, labels_for(60))
    inliers = world.sample(rng, np.zeros(100, dtype=int), n_hash_columns=1)
    shifted = world.embed(inliers.features + 4.0 * rng.normal(size=inliers.features.shape))

    auroc = _auroc(detector.score(inliers, 0), detector.score(shifted, 0))

    assert auroc > 0.95


@pytest.mark.parametrize(
    "name", ["mahalanobis", "relative_mahalanobis", "knn", "class_probability"]
)
def test_class_conditional_detectors_reject_other_classes_relabelled(
    name: str, world: GaussianWorld
) -> None:
    rng = np.random.default_rng(1)
    train = world.sample(rng, labels_for(60), n_hash_columns=8)
    detector = build_detector(name).fit(train, labels_for(60))
    own = world.sample(rng, np.zeros(100, dtype=int), n_hash_columns=1)
    other = world.sample(rng, np.ones(100, dtype=int), n_hash_columns=1)

    auroc = _auroc(detector.score(own, 0), detector.score(other, 0))

    assert auroc > 0.99


@pytest.mark.parametrize("name", ["energy", "max_softmax", "class_probability"])
def test_logit_detectors_prefer_confident_over_ambiguous_features(
    name: str, world: GaussianWorld
) -> None:
    rng = np.random.default_rng(2)
    confident = world.sample(rng, np.zeros(100, dtype=int), n_hash_columns=1)
    # Halfway between all class means: the classifier cannot tell, as on a failed sample.
    ambiguous = world.embed(
        world.means.mean(axis=0) + rng.normal(0.0, 1.0, confident.features.shape)
    )
    detector = build_detector(name).fit(confident, np.zeros(100, int))

    auroc = _auroc(detector.score(confident, 0), detector.score(ambiguous, 0))

    assert auroc > 0.95


def test_maximum_softmax_and_class_probability_are_probabilities(world: GaussianWorld) -> None:
    rng = np.random.default_rng(3)
    sample = world.sample(rng, labels_for(20), n_hash_columns=1)
    max_softmax = build_detector("max_softmax").score(sample, 0)
    probability = build_detector("class_probability").score(sample, 0)

    assert np.all((max_softmax >= 1 / 3 - 1e-9) & (max_softmax <= 1.0))
    assert np.all(probability <= max_softmax + 1e-6)  # float32 softmax in pytorch-ood
    np.testing.assert_allclose(
        probability[labels_for(20) == 0], max_softmax[labels_for(20) == 0], rtol=1e-5
    )


def test_relative_mahalanobis_ignores_shifts_real_images_of_every_class_show(
    world: GaussianWorld,
) -> None:
    """Isotropic noise moves a point away from the class *and* the background equally in
    the directions classes share, so relative Mahalanobis barely reacts; that is why it
    is combined with plain Mahalanobis and KNN rather than used alone."""
    rng = np.random.default_rng(0)
    train = world.sample(rng, labels_for(60), n_hash_columns=8)
    detector = RelativeMahalanobisDetector().fit(train, labels_for(60))
    plain = build_detector("mahalanobis").fit(train, labels_for(60))
    inliers = world.sample(rng, np.zeros(100, dtype=int), n_hash_columns=1)
    shifted = world.embed(inliers.features + 4.0 * rng.normal(size=inliers.features.shape))

    def drop(scorer: Detector) -> float:
        return float(np.median(scorer.score(inliers, 0) - scorer.score(shifted, 0)))

    assert 0 < drop(detector) < 0.5 * drop(plain)


def test_relative_mahalanobis_penalises_drift_towards_other_classes() -> None:
    """Two points equally far from the class mean by plain Mahalanobis: one drifted
    towards the other class (near-OOD, ambiguous), one sideways in a direction where every
    class spreads alike. Relative Mahalanobis rejects the first and treats the second like
    the class centre, since the background Gaussian is as surprised by it as the class."""
    rng = np.random.default_rng(4)
    n, dim = 400, 8
    labels = np.repeat([0, 1], n)
    means = np.zeros((2, dim))
    means[1, 0] = 8.0  # the classes differ along axis 0 only
    features = means[labels] + rng.normal(0.0, 1.0, (2 * n, dim))
    train = as_embeddings(features, np.zeros((2 * n, 2)))
    relative = RelativeMahalanobisDetector().fit(train, labels)
    plain = build_detector("mahalanobis").fit(train, labels)
    centre, towards_other_class, sideways = means[0], means[0].copy(), means[0].copy()
    towards_other_class[0] += 4.0
    sideways[1] += 4.0
    points = as_embeddings(np.stack([centre, towards_other_class, sideways]), np.zeros((3, 2)))

    plain_scores = plain.score(points, 0)
    relative_scores = relative.score(points, 0)

    assert plain_scores[1] == pytest.approx(plain_scores[2], rel=0.2)
    assert relative_scores[1] < relative_scores[0] - 10.0
    assert relative_scores[2] == pytest.approx(relative_scores[0], abs=1.5)


def test_unknown_detector_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown detector 'odin'"):
        build_detector("odin")
    assert set(DETECTOR_TYPES) >= {"mahalanobis", "knn", "energy"}


def test_sharpness_flags_blurred_and_noisy_images_on_both_sides() -> None:
    rng = np.random.default_rng(5)
    labels = np.zeros(60, dtype=int)
    images = make_images(rng, labels)
    blurred = images.copy()
    blurred[:] = images.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # flat: fully blurred
    noisy = np.clip(images + rng.normal(0, 60, images.shape), 0, 255).astype(np.uint8)

    def embed(batch: np.ndarray) -> ImageEmbeddings:
        zeros = np.zeros((len(batch), 2))
        return as_embeddings(zeros, zeros, log_laplacian_energy(batch))

    detector = build_detector("sharpness").fit(embed(images[:40]), labels[:40])
    real = detector.score(embed(images[40:]), 0)

    assert real.min() > detector.score(embed(blurred[40:]), 0).max()
    assert real.min() > detector.score(embed(noisy[40:]), 0).max()


def test_sharpness_refuses_embeddings_cached_without_it() -> None:
    zeros = np.zeros((4, 2))
    stale = ImageEmbeddings(zeros, zeros, np.zeros((4, 1), np.uint64), (16, 16, 3))

    with pytest.raises(ValueError, match="embed the images again"):
        build_detector("sharpness").fit(stale, np.zeros(4, int))

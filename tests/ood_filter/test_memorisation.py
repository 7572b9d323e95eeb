"""Exact and flipped copies of training images are rejected as near copies; distinct
real images are not."""

from __future__ import annotations

import numpy as np
import pytest

from services.ood_filter.features import embed_images, iter_image_batches
from services.ood_filter.filter import CandidateScores, OodFilter
from services.ood_filter.hashing import hamming_distances, orientations, perceptual_hashes
from services.ood_filter.memorisation import MemorisationGuard
from services.ood_filter.records import Reason
from tests.ood_filter.conftest import BlockColourExtractor, labels_for, make_images


@pytest.fixture
def fitted(extractor: BlockColourExtractor) -> tuple[OodFilter, np.ndarray, np.ndarray]:
    """A filter fitted on 30 train / 20 validation images per class, plus fresh real
    images of class 0 and the class-0 training images."""
    rng = np.random.default_rng(7)
    train_images = make_images(rng, labels_for(30))
    validation_images = make_images(rng, labels_for(20))
    ood_filter = OodFilter.fit(
        embed_images(extractor, iter_image_batches(train_images, 32)),
        labels_for(30),
        embed_images(extractor, iter_image_batches(validation_images, 32)),
        labels_for(20),
    )
    fresh = make_images(rng, np.zeros(40, dtype=int))
    return ood_filter, fresh, train_images[labels_for(30) == 0]


def _reasons(ood_filter: OodFilter, extractor: BlockColourExtractor, images: np.ndarray) -> list:
    chunks = ood_filter.score_batches(extractor, iter_image_batches(images, 16), 0)
    outcome = ood_filter.decide(CandidateScores.concatenate(list(chunks)))
    return [record.reason for record in outcome.records]


def test_exact_and_flipped_copies_are_rejected_as_near_copies(
    fitted: tuple[OodFilter, np.ndarray, np.ndarray], extractor: BlockColourExtractor
) -> None:
    ood_filter, _, train_class_0 = fitted
    sources = train_class_0[:10]
    copies = np.concatenate(
        [
            sources,
            sources[:, :, ::-1],  # horizontal flip
            sources[:, ::-1, :],  # vertical flip
            np.rot90(sources, 1, axes=(1, 2)),
            np.rot90(sources, 2, axes=(1, 2)),
        ]
    )

    reasons = _reasons(ood_filter, extractor, np.ascontiguousarray(copies))

    assert reasons == [Reason.NEAR_COPY] * len(copies)


def test_a_copy_with_slight_noise_is_still_a_near_copy(
    fitted: tuple[OodFilter, np.ndarray, np.ndarray], extractor: BlockColourExtractor
) -> None:
    ood_filter, _, train_class_0 = fitted
    rng = np.random.default_rng(8)
    noisy = np.clip(train_class_0[:10] + rng.normal(0, 3, train_class_0[:10].shape), 0, 255)

    reasons = _reasons(ood_filter, extractor, noisy.round().astype(np.uint8))

    assert reasons == [Reason.NEAR_COPY] * 10


def test_distinct_real_images_are_not_near_copies(
    fitted: tuple[OodFilter, np.ndarray, np.ndarray], extractor: BlockColourExtractor
) -> None:
    ood_filter, fresh, _ = fitted

    reasons = _reasons(ood_filter, extractor, fresh)

    assert reasons.count(Reason.NEAR_COPY) <= 1  # of 40: the guard targets copies only
    assert reasons.count(Reason.KEPT) >= 34


def test_flip_copy_features_differ_so_the_hash_is_what_catches_them(
    fitted: tuple[OodFilter, np.ndarray, np.ndarray], extractor: BlockColourExtractor
) -> None:
    ood_filter, _, train_class_0 = fitted
    flipped = np.ascontiguousarray(train_class_0[:10, :, ::-1])

    scores = CandidateScores.concatenate(
        list(ood_filter.score_batches(extractor, [flipped], 0))
    ).copy_check

    assert np.all(scores.phash_distance <= scores.phash_threshold)
    assert np.any(scores.nearest_similarity < scores.similarity_threshold)


def test_hashes_cover_all_eight_orientations() -> None:
    rng = np.random.default_rng(9)
    image = make_images(rng, np.array([0]))[0]

    reference = perceptual_hashes(image[None], all_orientations=True)[0]
    views = np.stack([np.ascontiguousarray(view) for view in orientations(image)])
    candidate_hashes = perceptual_hashes(views, all_orientations=False)[:, 0]

    assert reference.shape == (8,)
    assert np.all(hamming_distances(candidate_hashes, reference).min(axis=1) == 0)


def test_guard_refuses_hashes_without_orientations() -> None:
    with pytest.raises(ValueError, match="all_orientations=True"):
        MemorisationGuard().fit(
            np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((4, 1), dtype=np.uint64)
        )

"""Fixtures for the OOD filter tests: Gaussian features per class and a fake extractor.

The fake extractor stands in for ``ImageClassifier``: features are block-mean colours
(so flipped copies get *different* features and only the pHash check can catch them),
logits are negative distances of the mean colour to per-class colours (a nearest-
centroid classifier). Images are 16 px, so everything runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from services.ood_filter.features import ImageEmbeddings
from services.ood_filter.filter import CandidateScores, OodFilter

N_CLASSES = 3
FEATURE_DIM = 16
IMAGE_SIZE = 16
CLASS_COLOURS = np.array([[200.0, 60.0, 60.0], [60.0, 200.0, 60.0], [60.0, 60.0, 200.0]])


@dataclass(frozen=True)
class GaussianWorld:
    """Class means (C, D) and a linear head (D, C) producing confident logits."""

    means: np.ndarray
    head: np.ndarray

    def sample(
        self, rng: np.random.Generator, labels: np.ndarray, *, n_hash_columns: int
    ) -> ImageEmbeddings:
        features = self.means[labels] + rng.normal(0.0, 1.0, (len(labels), FEATURE_DIM))
        hashes = rng.integers(0, 2**63, (len(labels), n_hash_columns), dtype=np.uint64)
        return ImageEmbeddings(
            features=features.astype(np.float32),
            logits=(features @ self.head).astype(np.float32),
            phashes=hashes,
            image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
            sharpness=rng.normal(6.0, 0.5, len(labels)).astype(np.float32),
        )

    def embed(self, features: np.ndarray) -> ImageEmbeddings:
        """Embeddings of given features, with this world's logits and typical sharpness."""
        return as_embeddings(features, features @ self.head)


def as_embeddings(
    features: np.ndarray, logits: np.ndarray, sharpness: np.ndarray | None = None
) -> ImageEmbeddings:
    """Wrap raw arrays (N, D) / (N, C) as embeddings (hashes zero, sharpness 6 unless given)."""
    n = len(features)
    return ImageEmbeddings(
        features=np.asarray(features, dtype=np.float32),
        logits=np.asarray(logits, dtype=np.float32),
        phashes=np.zeros((n, 1), dtype=np.uint64),
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        sharpness=np.full(n, 6.0, dtype=np.float32) if sharpness is None else sharpness,
    )


@pytest.fixture
def world() -> GaussianWorld:
    """Three well-separated Gaussian classes in 16-D."""
    means = np.zeros((N_CLASSES, FEATURE_DIM))
    for c in range(N_CLASSES):
        means[c, c] = 6.0
    return GaussianWorld(means=means, head=means.T.copy() / 3.0)


def labels_for(n_per_class: int) -> np.ndarray:
    """(N_CLASSES * n_per_class,) labels 0, 0, ..., 1, 1, ..., 2, 2, ..."""
    return np.repeat(np.arange(N_CLASSES), n_per_class)


def fit_filter(world: GaussianWorld, rng: np.random.Generator, **options: Any) -> OodFilter:
    """A filter fitted on 40 training and 40 validation images per class."""
    return OodFilter.fit(
        world.sample(rng, labels_for(40), n_hash_columns=8),
        labels_for(40),
        world.sample(rng, labels_for(40), n_hash_columns=1),
        labels_for(40),
        **options,
    )


def filter_and_chunks(world: GaussianWorld, seed: int) -> tuple[OodFilter, list[CandidateScores]]:
    """A filter fitted on 40 images per class, and 30 class-0 candidates scored in three
    chunks of 10 (indices 0-29), as a job scores them batch by batch."""
    rng = np.random.default_rng(seed)
    ood_filter = fit_filter(world, rng)
    candidates = world.sample(rng, np.zeros(30, dtype=int), n_hash_columns=1)
    chunks = [
        ood_filter.score(candidates.subset(np.arange(start, start + 10)), 0, start_index=start)
        for start in (0, 10, 20)
    ]
    return ood_filter, chunks


class BlockColourExtractor:
    """Fake ``ImageClassifier``: 4 x 4 block-mean colours as features (48-D)."""

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = images.astype(np.float64)
        n, height, width, channels = pixels.shape
        blocks = pixels.reshape(n, 4, height // 4, 4, width // 4, channels).mean(axis=(2, 4))
        features = blocks.reshape(n, -1) / 255.0
        mean_colour = pixels.mean(axis=(1, 2))
        logits = -np.linalg.norm(mean_colour[:, None, :] - CLASS_COLOURS[None], axis=2) / 10.0
        return features, logits


def make_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """(N, 16, 16, 3) uint8: class colour + smooth random texture + a little noise."""
    coarse = rng.normal(0.0, 40.0, (len(labels), 4, 4, 3))
    texture = np.kron(coarse, np.ones((1, 4, 4, 1)))
    noise = rng.normal(0.0, 4.0, (len(labels), IMAGE_SIZE, IMAGE_SIZE, 3))
    images = CLASS_COLOURS[labels][:, None, None, :] + texture + noise
    return np.clip(images, 0, 255).round().astype(np.uint8)


@pytest.fixture
def extractor() -> BlockColourExtractor:
    return BlockColourExtractor()

"""Memorisation guard: reject candidates that are near copies of real training images.

Diffusion models can memorise training images; a copy of a patient's image in the
curated set is a privacy leak, not an augmentation. Two independent checks, either one
suffices to reject:

* **Feature similarity.** The candidate's nearest real training image (cosine similarity
  of L2-normalised classifier features, over all classes, so a copy of another class's
  image is caught too) is closer than real training images of that image's class usually
  are to one another: at or above the ``percentile`` (default 99th) of their
  nearest-*other*-training-image similarities, moved a ``margin`` fraction (default
  0.5) of the way from there to 1 (identical). The margin is needed because a class
  with tens of images estimates its 99th percentile from its few closest pairs, and a
  new image has one more reference to be close to than a training image has.
  A class with fewer than ``min_own_images`` images (2 images give one pair) borrows
  the statistic from every class, size-matched: each training image's similarity to
  the nearest of n - 1 random other images *of its own class*, pooled over classes, is
  what "distinct real images of a class of n" look like.
* **Perceptual hash.** The candidate's pHash is within ``phash_threshold`` bits of a
  training image's pHash in any of its 8 flips/rotations, which catches mirrored and
  rotated copies that a CNN's features need not recognise. The threshold is the smaller
  of ``max_phash_distance`` and one bit below the 1st percentile of distinct training
  images' nearest-neighbour distances, so real images are not flagged merely for
  resembling each other. It is one threshold for all classes, so it works at any class
  size: with 2 training images, either one, flipped or rotated, is still a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
from sklearn.neighbors import NearestNeighbors

from services.ood_filter.detectors import l2_normalise
from services.ood_filter.hashing import N_ORIENTATIONS, hamming_distances

_HASH_QUERY_CHUNK = 256  # candidates compared with all reference hashes at once
_HASH_CALIBRATION_SAMPLE = 2000  # training images used to calibrate the hash threshold
_POOLED_SIMILARITY_SAMPLE = 4000  # training images behind a size-matched pooled threshold


@dataclass(frozen=True)
class CopyCheck:
    """Memorisation-guard results for N candidates (all arrays have shape (N,)).

    Attributes:
        nearest_similarity: Cosine similarity to the nearest training image, in [-1, 1].
        nearest_index: Row of that image in the fitted training set.
        similarity_threshold: Threshold of the nearest image's class.
        phash_distance: Smallest Hamming distance to any training image orientation, bits.
        phash_threshold: Scalar distance at or below which a hash match counts (bits).
        is_copy: True where either check fired.
    """

    nearest_similarity: np.ndarray
    nearest_index: np.ndarray
    similarity_threshold: np.ndarray
    phash_distance: np.ndarray
    phash_threshold: int
    is_copy: np.ndarray


def _min_hash_distance(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(n,) smallest Hamming distance of each query hash to ``references`` (m,), chunked."""
    minima = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), _HASH_QUERY_CHUNK):
        chunk = queries[start : start + _HASH_QUERY_CHUNK]
        minima[start : start + len(chunk)] = hamming_distances(chunk, references).min(axis=1)
    return minima


class MemorisationGuard:
    """Flags candidates that copy a training image (see module docstring)."""

    def __init__(
        self,
        *,
        percentile: float = 99.0,
        margin: float = 0.5,
        max_phash_distance: int = 6,
        min_own_images: int = 10,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        if max_phash_distance < 0:
            raise ValueError(f"max_phash_distance must be >= 0, got {max_phash_distance}")
        if min_own_images < 2:
            raise ValueError(f"min_own_images must be >= 2, got {min_own_images}")
        self.percentile = percentile
        self.margin = margin
        self.max_phash_distance = max_phash_distance
        self.min_own_images = min_own_images
        self.seed = seed
        self.similarity_thresholds: dict[int, float] = {}
        self.phash_threshold = 0
        self._train_labels = np.empty(0, dtype=np.int64)
        self._train_index: NearestNeighbors | None = None
        self._reference_hashes = np.empty(0, dtype=np.uint64)

    def fit(self, features: np.ndarray, labels: np.ndarray, phashes: np.ndarray) -> Self:
        """Fit on real training images.

        Args:
            features: (N, D) classifier features.
            labels: (N,) int class labels (a class with fewer than ``min_own_images``
                uses the size-matched all-class similarity statistic).
            phashes: (N, 8) uint64 pHashes of each image in its 8 orientations.
        """
        if phashes.ndim != 2 or phashes.shape[1] != N_ORIENTATIONS:
            raise ValueError(
                f"training hashes must cover all {N_ORIENTATIONS} orientations, "
                f"got shape {phashes.shape}; embed training images with all_orientations=True"
            )
        normalised = l2_normalise(features)
        self._train_labels = np.asarray(labels, dtype=np.int64)
        self._train_index = NearestNeighbors(n_neighbors=1).fit(normalised)
        self.similarity_thresholds = {}
        pooled: dict[int, float] = {}  # by number of other images, shared by equal sizes
        for c in np.unique(self._train_labels):
            members = normalised[self._train_labels == c]
            if len(members) >= self.min_own_images:
                self.similarity_thresholds[int(c)] = self._similarity_threshold(members)
                continue
            n_others = max(len(members) - 1, 1)
            if n_others not in pooled:
                pooled[n_others] = self._pooled_similarity_threshold(normalised, n_others)
            self.similarity_thresholds[int(c)] = pooled[n_others]
        self._reference_hashes = np.ascontiguousarray(phashes.reshape(-1))
        self.phash_threshold = self._calibrate_hash_threshold(phashes)
        return self

    def _with_margin(self, similarities: np.ndarray) -> float:
        typical = float(np.percentile(similarities, self.percentile))
        return typical + self.margin * (1.0 - typical)

    def _similarity_threshold(self, members: np.ndarray) -> float:
        """Percentile of the similarities of images to their nearest other image, plus margin."""
        if len(members) < 2:
            raise ValueError(
                "the memorisation guard needs at least 2 training images to learn how close "
                f"distinct real images get, got {len(members)}"
            )
        # Neighbour 0 is the image itself; neighbour 1 is the nearest *other* image.
        distances, _ = NearestNeighbors(n_neighbors=2).fit(members).kneighbors(members)
        return self._with_margin(1.0 - distances[:, 1] ** 2 / 2.0)

    def _pooled_similarity_threshold(self, normalised: np.ndarray, n_others: int) -> float:
        """The threshold for a class whose images each have ``n_others`` other images.

        Every training image of a class with at least 2 images (a sample of them) is
        compared with ``n_others`` random other images of its own class (all of them
        when there are fewer); the similarity to the nearest one, pooled over classes,
        is the statistic :meth:`_similarity_threshold` takes from a class's own images.
        """
        rng = np.random.default_rng(self.seed + n_others)
        labels = self._train_labels
        classes, counts = np.unique(labels, return_counts=True)
        eligible = np.flatnonzero(np.isin(labels, classes[counts >= 2]))
        if len(eligible) == 0:  # no class has two images: compare with any other image
            if len(normalised) < 2:
                return 1.0 - 1e-9  # a single training image: only its exact copy is one
            return self._similarity_threshold(normalised)
        if len(eligible) > _POOLED_SIMILARITY_SAMPLE:
            eligible = np.sort(rng.choice(eligible, _POOLED_SIMILARITY_SAMPLE, replace=False))
        members_of = {int(c): np.flatnonzero(labels == c) for c in classes[counts >= 2]}
        nearest = np.empty(len(eligible))
        for row, image in enumerate(eligible):
            others = members_of[int(labels[image])]
            others = others[others != image]
            chosen = rng.choice(others, size=min(n_others, len(others)), replace=False)
            nearest[row] = float(np.max(normalised[chosen] @ normalised[image]))
        return self._with_margin(nearest)

    def _calibrate_hash_threshold(self, phashes: np.ndarray) -> int:
        """One bit below the 1st percentile of distinct training images' hash distances."""
        n_images = len(phashes)
        if n_images < 2:  # nothing to tell distinct images apart by
            return self.max_phash_distance
        rng = np.random.default_rng(self.seed)
        sample = rng.choice(n_images, size=min(n_images, _HASH_CALIBRATION_SAMPLE), replace=False)
        owners = np.repeat(np.arange(n_images), N_ORIENTATIONS)
        nearest_other = np.empty(len(sample), dtype=np.int64)
        for row, image in enumerate(sample):
            distances = hamming_distances(phashes[image, :1], self._reference_hashes)[0]
            nearest_other[row] = distances[owners != image].min()
        typical_floor = int(np.floor(np.percentile(nearest_other, 1.0)))
        return max(0, min(self.max_phash_distance, typical_floor - 1))

    def check(self, features: np.ndarray, phashes: np.ndarray) -> CopyCheck:
        """Check candidates: features (N, D), phashes (N, V) uint64 (column 0 is used)."""
        if self._train_index is None:
            raise RuntimeError("MemorisationGuard.fit was not called")
        distances, neighbours = self._train_index.kneighbors(l2_normalise(features))
        nearest_index = neighbours[:, 0]
        nearest_similarity = 1.0 - distances[:, 0] ** 2 / 2.0
        similarity_threshold = np.array(
            [self.similarity_thresholds[int(c)] for c in self._train_labels[nearest_index]],
            dtype=np.float64,
        )
        phash_distance = _min_hash_distance(phashes[:, 0], self._reference_hashes)
        is_copy = (nearest_similarity >= similarity_threshold) | (
            phash_distance <= self.phash_threshold
        )
        return CopyCheck(
            nearest_similarity=nearest_similarity,
            nearest_index=nearest_index,
            similarity_threshold=similarity_threshold,
            phash_distance=phash_distance,
            phash_threshold=self.phash_threshold,
            is_copy=is_copy,
        )

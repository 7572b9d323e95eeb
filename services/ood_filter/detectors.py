"""OOD detectors, fitted on real training images, scoring candidates of one class.

Score convention for every detector: **higher = more in-distribution / more acceptable**
(the negation of pytorch-ood's outlier scores). Scores are float64 arrays of shape (N,).

Why not pytorch-ood's Mahalanobis and KNN directly: its ``Mahalanobis`` scores the
distance to the *closest* class centre with an unshrunk pooled scatter matrix, and its
``KNN`` searches all classes at once, whereas post-selection must ask "does this look like
a real image *of the requested class*", and tail classes have fewer images than feature
dimensions, so the covariance needs shrinkage (scikit-learn ``LedoitWolf``) and the
neighbour search must be per class (scikit-learn ``NearestNeighbors``). The logit-based
scores (energy, maximum softmax) are class-agnostic and come from pytorch-ood as is.
Sharpness (log Laplacian energy of the pixels) covers blur and noise, which classifier
features are trained to be invariant to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np
import torch
from pytorch_ood.detector import EnergyBased, MaxSoftmax
from scipy.stats import median_abs_deviation
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from services.ood_filter.features import ImageEmbeddings


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; (N, D) float -> (N, D) float64."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _squared_mahalanobis(
    features: np.ndarray, mean: np.ndarray, precision: np.ndarray
) -> np.ndarray:
    """(x - mu)^T P (x - mu) per row; features (N, D), mean (D,), precision (D, D) -> (N,)."""
    centred = np.asarray(features, dtype=np.float64) - mean
    return np.einsum("nd,nd->n", centred @ precision, centred)


class Detector(ABC):
    """A detector fitted on labelled real training images' embeddings, scoring one class."""

    name: ClassVar[str]
    #: True when the score does not depend on the requested class (logit-based scores).
    class_agnostic: ClassVar[bool] = False

    @abstractmethod
    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        """Fit on real training images: their embeddings and (N,) int labels."""

    @abstractmethod
    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        """Scores (N,) float64 of candidates for ``class_index``; higher = more in-distribution."""


class MahalanobisDetector(Detector):
    """Negative squared Mahalanobis distance to the requested class's mean.

    Class means with one covariance shared by all classes (Lee et al., 2018), estimated
    with Ledoit-Wolf shrinkage on class-centred features because tail classes have fewer
    images than dimensions.
    """

    name = "mahalanobis"

    def __init__(self) -> None:
        self.class_means: dict[int, np.ndarray] = {}
        self.precision: np.ndarray | None = None

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        features = np.asarray(train.features, dtype=np.float64)
        self.class_means = {int(c): features[labels == c].mean(axis=0) for c in np.unique(labels)}
        means = np.stack([self.class_means[int(c)] for c in labels])
        shrunk = LedoitWolf(assume_centered=True).fit(features - means)
        self.precision = shrunk.precision_
        return self

    def class_distance(self, features: np.ndarray, class_index: int) -> np.ndarray:
        """Squared Mahalanobis distance (N,) to the class mean, in squared feature units."""
        if self.precision is None:
            raise RuntimeError("MahalanobisDetector.fit was not called")
        return _squared_mahalanobis(features, self.class_means[class_index], self.precision)

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        return -self.class_distance(candidates.features, class_index)


class RelativeMahalanobisDetector(MahalanobisDetector):
    """Relative Mahalanobis (Ren et al., 2021): class distance minus background distance.

    The background Gaussian is fitted on all training features regardless of class; the
    difference cancels directions in which every real image varies (e.g. acquisition
    style), leaving what is specific to the class. Score = -(MD_c - MD_background).
    """

    name = "relative_mahalanobis"

    def __init__(self) -> None:
        super().__init__()
        self.background_mean: np.ndarray | None = None
        self.background_precision: np.ndarray | None = None

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        super().fit(train, labels)
        features = np.asarray(train.features, dtype=np.float64)
        self.background_mean = features.mean(axis=0)
        background = LedoitWolf(assume_centered=True).fit(features - self.background_mean)
        self.background_precision = background.precision_
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        features = candidates.features
        if self.background_mean is None or self.background_precision is None:
            raise RuntimeError("RelativeMahalanobisDetector.fit was not called")
        background = _squared_mahalanobis(features, self.background_mean, self.background_precision)
        return -(self.class_distance(features, class_index) - background)


class KnnDetector(Detector):
    """Negative distance to the k-th nearest training image of the class (Sun et al., 2022).

    Features are L2-normalised, so the distance lies in [0, 2]; k is capped by the
    class's number of training images.
    """

    name = "knn"

    def __init__(self, k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.indexes: dict[int, NearestNeighbors] = {}

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        normalised = l2_normalise(train.features)
        self.indexes = {}
        for c in np.unique(labels):
            members = normalised[labels == c]
            self.indexes[int(c)] = NearestNeighbors(n_neighbors=min(self.k, len(members))).fit(
                members
            )
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        index = self.indexes[class_index]
        distances, _ = index.kneighbors(l2_normalise(candidates.features))
        return -distances[:, -1]


class EnergyDetector(Detector):
    """Negative free energy, logsumexp of the logits (Liu et al., 2020); class-agnostic."""

    name = "energy"
    class_agnostic = True

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        logits = torch.from_numpy(np.asarray(candidates.logits, dtype=np.float32))
        energy = EnergyBased.score(logits)
        return -energy.double().numpy()


class MaxSoftmaxDetector(Detector):
    """Maximum softmax probability (Hendrycks and Gimpel, 2017), in [1/C, 1]; class-agnostic."""

    name = "max_softmax"
    class_agnostic = True

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        logits = torch.from_numpy(np.asarray(candidates.logits, dtype=np.float32))
        negated = MaxSoftmax.score(logits)
        return -negated.double().numpy()


class ClassProbabilityDetector(Detector):
    """The classifier's softmax probability of the requested class, in [0, 1].

    This is the ``off_class`` check: a candidate the classifier does not recognise as the
    class it was generated for is a label error, whatever the other detectors say.
    """

    name = "class_probability"

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        logits = torch.from_numpy(np.asarray(candidates.logits, dtype=np.float64))
        probabilities = logits.softmax(dim=1)
        return probabilities[:, class_index].numpy()


def _sharpness_of(embeddings: ImageEmbeddings) -> np.ndarray:
    if embeddings.sharpness is None:
        raise ValueError(
            "these embeddings carry no sharpness values (cached before the sharpness "
            "detector existed); embed the images again with embed_images"
        )
    return np.asarray(embeddings.sharpness, dtype=np.float64)


class SharpnessDetector(Detector):
    """Negative robust z-score of the image's sharpness within the class's training images.

    ``-|s - median_c| / MAD_c`` with ``s`` the log Laplacian energy
    (:mod:`.sharpness`): two-sided, so both blurred (too smooth) and noisy (too sharp)
    candidates score low. Catches what classifier features are trained to ignore.
    """

    name = "sharpness"

    def __init__(self) -> None:
        self.medians: dict[int, float] = {}
        self.spreads: dict[int, float] = {}

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        sharpness = _sharpness_of(train)
        for c in np.unique(labels):
            members = sharpness[labels == c]
            self.medians[int(c)] = float(np.median(members))
            # A floor keeps a class of near-identical images from dividing by ~0.
            self.spreads[int(c)] = max(float(median_abs_deviation(members)), 1e-3)
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        deviation = _sharpness_of(candidates) - self.medians[class_index]
        return -np.abs(deviation) / self.spreads[class_index]


DETECTOR_TYPES: dict[str, type[Detector]] = {
    detector.name: detector
    for detector in (
        MahalanobisDetector,
        RelativeMahalanobisDetector,
        KnnDetector,
        EnergyDetector,
        MaxSoftmaxDetector,
        ClassProbabilityDetector,
        SharpnessDetector,
    )
}
OFF_CLASS_DETECTOR = ClassProbabilityDetector.name


def build_detector(name: str, *, knn_k: int = 5) -> Detector:
    """A fresh detector by name (one of :data:`DETECTOR_TYPES`)."""
    if name not in DETECTOR_TYPES:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTOR_TYPES)}")
    if name == KnnDetector.name:
        return KnnDetector(k=knn_k)
    return DETECTOR_TYPES[name]()

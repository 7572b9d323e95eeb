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

**Classes of any size.** Every detector is fitted on every class with at least one
training image, and scores a class so that the scores of different classes can be put
on one scale (the filter calibrates the extreme tail on all classes' validation images
together, see :mod:`.filter`):

* Mahalanobis uses the covariance tied across classes; a class mean estimated from n
  images misses the true mean by Sigma / n, so squared distances are divided by
  ``1 + 1/n`` (for a Gaussian class they then follow the same law whatever n is).
* Sharpness uses the class's own spread shrunk towards the spread within all classes
  (``_PRIOR_IMAGES`` pseudo-images) and the same allowance for a median from n images.
* KNN's distance to the k-th neighbour depends on how many neighbours there are, so
  :meth:`Detector.reference_scores` can score real images of other classes *as if*
  their class had n images (a random n of them), which is what a tail class's
  candidates are compared against.
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

# Weight, in images, of the all-class statistic when a class's own one is shrunk towards
# it: a class of 2 images leans mostly on all classes, one of 100 on itself.
_PRIOR_IMAGES = 5.0


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; (N, D) float -> (N, D) float64."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _size_matched_subsets(
    labels: np.ndarray, class_sizes: dict[int, int], size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per row, random indices of ``min(size, n)`` of the n training images of its class."""
    subsets = []
    for c in labels:
        n = class_sizes[int(c)]
        subsets.append(rng.choice(n, size=min(size, n), replace=False))
    return subsets


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

    #: True when a class's scores depend on how many training images it has beyond what
    #: :meth:`score` adjusts for (then :meth:`reference_scores` honours ``reference_size``).
    count_sensitive: ClassVar[bool] = False

    def reference_scores(
        self,
        images: ImageEmbeddings,
        labels: np.ndarray,
        *,
        reference_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Scores (N,) of labelled real images, each against its *own* class's model.

        This is the pooled reference distribution a tail class is calibrated on. Every
        label must be a fitted class.

        Args:
            images: Embeddings of real (validation) images.
            labels: (N,) their classes.
            reference_size: Score as if each class had this many training images (used
                by count-sensitive detectors; the others adjust inside :meth:`score`).
            rng: Randomness for that subsampling.
        """
        scores = np.empty(len(labels), dtype=np.float64)
        for c in np.unique(labels):
            rows = labels == c
            scores[rows] = self.score(images.subset(rows), int(c))
        return scores


class MahalanobisDetector(Detector):
    """Negative squared Mahalanobis distance to the requested class's mean.

    Class means with one covariance shared by all classes (Lee et al., 2018; tied, i.e.
    the pooled covariance outright, which is what a class of 2 images needs and what
    larger classes lose little by), estimated with Ledoit-Wolf shrinkage on class-centred
    features because tail classes have fewer images than dimensions. A class of n
    images contributes its residuals scaled by sqrt(n / (n - 1)) (its mean took one
    degree of freedom; a single image adds nothing). Distances are divided by
    ``1 + 1/n``, the inflation a mean of n images causes, so a class of 2 and a class
    of 2,000 score their real images alike.
    """

    name = "mahalanobis"
    count_sensitive = True

    def __init__(self) -> None:
        self.class_means: dict[int, np.ndarray] = {}
        self.class_counts: dict[int, int] = {}
        self.covariance: np.ndarray | None = None
        self.precision: np.ndarray | None = None
        self._members: dict[int, np.ndarray] = {}

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        features = np.asarray(train.features, dtype=np.float64)
        classes, counts = np.unique(labels, return_counts=True)
        self._members = {int(c): features[labels == c] for c in classes}
        self.class_means = {c: members.mean(axis=0) for c, members in self._members.items()}
        self.class_counts = {int(c): int(n) for c, n in zip(classes, counts, strict=True)}
        size = np.array([self.class_counts[int(c)] for c in labels], dtype=np.float64)
        residuals = features - np.stack([self.class_means[int(c)] for c in labels])
        spread = size >= 2
        if spread.sum() >= 2:
            residuals = residuals[spread] * np.sqrt(size[spread] / (size[spread] - 1.0))[:, None]
        else:  # every class has one image: only the spread between classes is left
            residuals = features - features.mean(axis=0)
        tied = LedoitWolf(assume_centered=True).fit(residuals)
        self.covariance, self.precision = tied.covariance_, tied.precision_
        return self

    def _distance(
        self, features: np.ndarray, means: np.ndarray, sizes: np.ndarray | float
    ) -> np.ndarray:
        """Squared distance (N,) to means ((D,) or (N, D)) of ``sizes`` images, / (1 + 1/n)."""
        if self.precision is None:
            raise RuntimeError(f"{type(self).__name__}.fit was not called")
        return _squared_mahalanobis(features, means, self.precision) / (1.0 + 1.0 / sizes)

    def _score(
        self, features: np.ndarray, means: np.ndarray, sizes: np.ndarray | float
    ) -> np.ndarray:
        return -self._distance(features, means, sizes)

    def class_distance(self, features: np.ndarray, class_index: int) -> np.ndarray:
        """Squared Mahalanobis distance (N,) to the class mean, in squared feature units,
        divided by ``1 + 1/n`` for a mean of n training images."""
        return self._distance(
            features, self.class_means[class_index], float(self.class_counts[class_index])
        )

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        return self._score(
            np.asarray(candidates.features, dtype=np.float64),
            self.class_means[class_index],
            float(self.class_counts[class_index]),
        )

    def reference_scores(
        self,
        images: ImageEmbeddings,
        labels: np.ndarray,
        *,
        reference_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """As :meth:`Detector.reference_scores`; with ``reference_size`` n each image is
        scored against the mean of a fresh random n of its class's training images: a
        class mean of 2 images is off by a random amount that shifts *all* its
        candidates' scores alike, which the ``1 + 1/n`` allowance covers only on average,
        so the pooled reference must show that spread too."""
        if reference_size is None:
            return super().reference_scores(images, labels)
        subsets = _size_matched_subsets(
            labels, self.class_counts, reference_size, rng or np.random.default_rng(0)
        )
        means = np.stack(
            [
                self._members[int(c)][rows].mean(axis=0)
                for c, rows in zip(labels, subsets, strict=True)
            ]
        )
        sizes = np.array([len(rows) for rows in subsets], dtype=np.float64)
        return self._score(np.asarray(images.features, dtype=np.float64), means, sizes)


class RelativeMahalanobisDetector(MahalanobisDetector):
    """Relative Mahalanobis (Ren et al., 2021): class distance minus background distance.

    The background Gaussian describes all training images regardless of class; the
    difference cancels directions in which every real image varies (e.g. acquisition
    style), leaving what is specific to the class. Score = -(MD_c - MD_background).

    The background weighs every class equally (mean of the class means; covariance the
    tied within-class one plus the scatter of the class means), not every image: fitted
    to a long-tailed set as is, it would sit on the head class, so real images of a tail
    class would score far higher than the head's own, and the scores of different
    classes could not share the pooled thresholds the tail is calibrated with. The
    difference is divided by ``1 + 1/n`` like the class distance: a mean of n images
    misses the class's real images by as much when seen from the background.
    """

    name = "relative_mahalanobis"

    def __init__(self) -> None:
        super().__init__()
        self.background_mean: np.ndarray | None = None
        self.background_precision: np.ndarray | None = None

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        super().fit(train, labels)
        assert self.covariance is not None
        means = np.stack(list(self.class_means.values()))
        self.background_mean = means.mean(axis=0)
        between = (means - self.background_mean).T @ (means - self.background_mean) / len(means)
        self.background_precision = np.linalg.inv(self.covariance + between)
        return self

    def _score(
        self, features: np.ndarray, means: np.ndarray, sizes: np.ndarray | float
    ) -> np.ndarray:
        if self.background_mean is None or self.background_precision is None:
            raise RuntimeError("RelativeMahalanobisDetector.fit was not called")
        background = _squared_mahalanobis(features, self.background_mean, self.background_precision)
        # A class mean of n images is off by Sigma / n, which inflates the distance of the
        # class's real images from the background as much as from the class mean: the
        # whole difference is divided by 1 + 1/n (_distance already is).
        return -(self._distance(features, means, sizes) - background / (1.0 + 1.0 / sizes))


class KnnDetector(Detector):
    """Negative distance to the k-th nearest training image of the class (Sun et al., 2022).

    Features are L2-normalised, so the distance lies in [0, 2]; k is capped by the
    class's number of training images. Count-sensitive: with 2 images the 2nd neighbour
    is further than with 200, so a tail class is calibrated on other classes' real
    images scored against a random subset of their class of the tail class's size
    (:meth:`reference_scores`).
    """

    name = "knn"
    count_sensitive = True

    def __init__(self, k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.indexes: dict[int, NearestNeighbors] = {}
        self.members: dict[int, np.ndarray] = {}

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        normalised = l2_normalise(train.features)
        self.indexes = {}
        self.members = {}
        for c in np.unique(labels):
            members = normalised[labels == c]
            self.members[int(c)] = members
            self.indexes[int(c)] = NearestNeighbors(n_neighbors=min(self.k, len(members))).fit(
                members
            )
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        index = self.indexes[class_index]
        distances, _ = index.kneighbors(l2_normalise(candidates.features))
        return -distances[:, -1]

    def reference_scores(
        self,
        images: ImageEmbeddings,
        labels: np.ndarray,
        *,
        reference_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """As :meth:`Detector.reference_scores`; with ``reference_size`` n each image is
        scored against a fresh random n of its class's training images (all of them when
        the class has fewer), with k capped at n as for a class of n."""
        if reference_size is None:
            return super().reference_scores(images, labels)
        sizes = {c: len(members) for c, members in self.members.items()}
        subsets = _size_matched_subsets(
            labels, sizes, reference_size, rng or np.random.default_rng(0)
        )
        normalised = l2_normalise(images.features)
        scores = np.empty(len(labels), dtype=np.float64)
        for row, (c, chosen) in enumerate(zip(labels, subsets, strict=True)):
            k = min(self.k, len(chosen))
            distances = np.linalg.norm(self.members[int(c)][chosen] - normalised[row], axis=1)
            scores[row] = -np.partition(distances, k - 1)[k - 1]
        return scores


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

    With ``prior_correction`` the logits first lose the log of each class's share of the
    training images (Laplace-smoothed): a classifier trained with plain cross-entropy on
    a long-tailed split has those priors built in, so a real image of a 3-image class
    gets a tiny probability and the check cannot tell it from another class's image.
    The corrected (class-balanced) posterior can (Menon et al., 2021, post-hoc logit
    adjustment). Leave it off for a classifier trained class-balanced.
    """

    name = "class_probability"

    def __init__(self, prior_correction: bool = False) -> None:
        self.prior_correction = prior_correction
        self.log_prior: np.ndarray | None = None

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        if self.prior_correction:
            counts = np.bincount(labels, minlength=train.logits.shape[1]).astype(np.float64)
            self.log_prior = np.log((counts + 1.0) / (counts.sum() + len(counts)))
        return self

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        logits = np.asarray(candidates.logits, dtype=np.float64)
        if self.log_prior is not None:
            logits = logits - self.log_prior
        probabilities = torch.from_numpy(logits).softmax(dim=1)
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

    ``-|s - median_c| / spread_c`` with ``s`` the log Laplacian energy
    (:mod:`.sharpness`): two-sided, so both blurred (too smooth) and noisy (too sharp)
    candidates score low. Catches what classifier features are trained to ignore.

    ``spread_c`` is the class's median absolute deviation shrunk towards the one within
    all classes (weights n - 1 and ``_PRIOR_IMAGES``; a class of one image uses the
    all-class spread), widened by ``sqrt(1 + pi / 2n)`` for a median of n images.
    """

    name = "sharpness"
    count_sensitive = True

    def __init__(self) -> None:
        self.medians: dict[int, float] = {}
        self.spreads: dict[int, float] = {}
        self.pooled_spread = 0.0
        self._members: dict[int, np.ndarray] = {}

    def fit(self, train: ImageEmbeddings, labels: np.ndarray) -> Self:
        sharpness = _sharpness_of(train)
        self._members = {int(c): sharpness[labels == c] for c in np.unique(labels)}
        medians = {c: float(np.median(values)) for c, values in self._members.items()}
        deviations = np.abs(sharpness - np.array([medians[int(c)] for c in labels]))
        spread_rows = np.array([len(self._members[int(c)]) >= 2 for c in labels])
        self.pooled_spread = (
            float(np.median(deviations[spread_rows]))
            if spread_rows.any()
            else float(median_abs_deviation(sharpness))
        )
        self.medians, self.spreads = {}, {}
        for c, values in self._members.items():
            self.medians[c], self.spreads[c] = self._location_and_spread(values)
        return self

    def _location_and_spread(self, values: np.ndarray) -> tuple[float, float]:
        """Median and shrunken, widened spread of one class's n sharpness values."""
        n = len(values)
        own = float(median_abs_deviation(values)) if n >= 2 else 0.0
        shrunk = np.sqrt(
            ((n - 1) * own**2 + _PRIOR_IMAGES * self.pooled_spread**2) / (n - 1 + _PRIOR_IMAGES)
        )
        # A floor keeps a class of near-identical images from dividing by ~0.
        return float(np.median(values)), max(float(shrunk * np.sqrt(1.0 + np.pi / (2 * n))), 1e-3)

    def score(self, candidates: ImageEmbeddings, class_index: int) -> np.ndarray:
        deviation = _sharpness_of(candidates) - self.medians[class_index]
        return -np.abs(deviation) / self.spreads[class_index]

    def reference_scores(
        self,
        images: ImageEmbeddings,
        labels: np.ndarray,
        *,
        reference_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """As :meth:`Detector.reference_scores`; with ``reference_size`` n each image is
        scored against the median and spread of a fresh random n of its class's
        training images (a median of 2 is off by a random amount, as for the tail)."""
        if reference_size is None:
            return super().reference_scores(images, labels)
        sizes = {c: len(values) for c, values in self._members.items()}
        subsets = _size_matched_subsets(
            labels, sizes, reference_size, rng or np.random.default_rng(0)
        )
        sharpness = _sharpness_of(images)
        scores = np.empty(len(labels), dtype=np.float64)
        for row, (c, chosen) in enumerate(zip(labels, subsets, strict=True)):
            median, spread = self._location_and_spread(self._members[int(c)][chosen])
            scores[row] = -abs(sharpness[row] - median) / spread
        return scores


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


def build_detector(name: str, *, knn_k: int = 5, prior_correction: bool = False) -> Detector:
    """A fresh detector by name (one of :data:`DETECTOR_TYPES`)."""
    if name not in DETECTOR_TYPES:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTOR_TYPES)}")
    if name == KnnDetector.name:
        return KnnDetector(k=knn_k)
    if name == ClassProbabilityDetector.name:
        return ClassProbabilityDetector(prior_correction=prior_correction)
    return DETECTOR_TYPES[name]()

"""Feature extraction for the OOD filter: features, logits, hashes and sharpness, streamed.

The filter does not own a classifier. It needs, for a batch of uint8 images, penultimate
features and class logits from a model fine-tuned on the dataset's real training split;
``services.trainer.classifier.ImageClassifier`` provides exactly that
(``features_and_logits``), and anything else with the same method works too (tests use a
fake). Images never accumulate here: each batch is embedded and dropped, so memory is
bounded by one batch plus N x (D + C) floats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.ood_filter.hashing import perceptual_hashes
from services.ood_filter.sharpness import log_laplacian_energy

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


class OodFilterCanceled(Exception):
    """Raised between batches when ``should_cancel()`` returned True."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the filter needs from a classifier.

    ``features_and_logits(images)`` takes uint8 images (N, H, W, C) (or (N, H, W) for
    grayscale) and returns features (N, D) and logits (N, C_classes) as numpy arrays or
    torch tensors; row i of both describes image i.
    """

    def features_and_logits(self, images: np.ndarray) -> tuple[Any, Any]: ...


@dataclass(frozen=True)
class ImageEmbeddings:
    """What the filter keeps of a set of images.

    Attributes:
        features: (N, D) float32 penultimate features.
        logits: (N, C) float32 classifier logits.
        phashes: (N, V) uint64 perceptual hashes; V = 8 orientations for reference
            (training) images, 1 for candidates; column 0 is the image as given.
        image_shape: (H, W, C) of every image (C = 1 for grayscale).
        sharpness: (N,) float32 log Laplacian energy (see :mod:`.sharpness`); None only
            for embeddings cached before it existed (the sharpness detector refuses them).
    """

    features: np.ndarray
    logits: np.ndarray
    phashes: np.ndarray
    image_shape: tuple[int, int, int]
    sharpness: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, rows: np.ndarray) -> ImageEmbeddings:
        """The embeddings of ``rows`` (an index or boolean array)."""
        return ImageEmbeddings(
            self.features[rows],
            self.logits[rows],
            self.phashes[rows],
            self.image_shape,
            None if self.sharpness is None else self.sharpness[rows],
        )


def image_shape_of(images: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of a uint8 batch, validating dtype and layout.

    Raises:
        ValueError: Not uint8, not (N, H, W) / (N, H, W, C), or C not in {1, 3}.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim == 3:
        return int(images.shape[1]), int(images.shape[2]), 1
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    raise ValueError(
        f"images must be (N, H, W) grayscale or (N, H, W, C) with C in (1, 3), got {images.shape}"
    )


def iter_image_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive views of ``images`` of at most ``batch_size`` rows (no copies)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _as_float32(values: Any, name: str, n_rows: int) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor; avoid importing torch here
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(
            f"extractor returned {name} of shape {array.shape}, expected ({n_rows}, K)"
        )
    return array


def embed_batch(
    extractor: FeatureExtractor, images: np.ndarray, *, all_orientations: bool
) -> ImageEmbeddings:
    """Features, logits and pHashes of one uint8 batch (see :class:`ImageEmbeddings`)."""
    shape = image_shape_of(images)
    features, logits = extractor.features_and_logits(images)
    return ImageEmbeddings(
        features=_as_float32(features, "features", len(images)),
        logits=_as_float32(logits, "logits", len(images)),
        phashes=perceptual_hashes(images, all_orientations=all_orientations),
        image_shape=shape,
        sharpness=log_laplacian_energy(images),
    )


def concatenate(parts: list[ImageEmbeddings]) -> ImageEmbeddings:
    """Stack embeddings of consecutive batches; all must share one image shape."""
    if not parts:
        raise ValueError("no images were embedded (the batch iterator was empty)")
    shapes = {part.image_shape for part in parts}
    if len(shapes) > 1:
        raise ValueError(f"batches have different image shapes: {sorted(shapes)}")
    return ImageEmbeddings(
        features=np.concatenate([part.features for part in parts]),
        logits=np.concatenate([part.logits for part in parts]),
        phashes=np.concatenate([part.phashes for part in parts]),
        image_shape=parts[0].image_shape,
        sharpness=None
        if any(part.sharpness is None for part in parts)
        else np.concatenate([part.sharpness for part in parts]),
    )


def embed_images(
    extractor: FeatureExtractor,
    batches: Iterable[np.ndarray],
    *,
    all_orientations: bool = True,
    total: int | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> ImageEmbeddings:
    """Embed a stream of uint8 image batches in bounded memory.

    This is the function to cache per dataset and model: reference (training and
    validation) images go through it once, with ``all_orientations=True`` so flipped
    copies of training images can be recognised later.

    Args:
        extractor: Anything with ``features_and_logits`` (e.g. ``ImageClassifier``).
        batches: Iterable of uint8 arrays (n_i, H, W[, C]); a list or a lazy generator.
        all_orientations: Hash all 8 flips/rotations of each image (reference sets).
        total: Number of images expected, for ``progress`` (0 when unknown).
        progress: Called as ``progress(done_images, total)`` after each batch.
        should_cancel: Polled before each batch; True stops with :class:`OodFilterCanceled`.

    Returns:
        The embeddings of every image, in input order.
    """
    parts: list[ImageEmbeddings] = []
    done = 0
    for batch in batches:
        if should_cancel is not None and should_cancel():
            raise OodFilterCanceled(f"canceled after embedding {done} images")
        parts.append(embed_batch(extractor, batch, all_orientations=all_orientations))
        done += len(batch)
        if progress is not None:
            progress(done, total or 0)
    return concatenate(parts)

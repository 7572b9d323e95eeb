"""Tiny learnable image sets for the trainer tests: a coloured square per class on noise."""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ["red", "green", "blue"]
_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=np.uint8)


def coloured_squares(
    count: int, seed: int, *, size: int = 24, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (count, size, size, 3) with a class-coloured square at a random spot."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = np.arange(count) % len(CLASS_NAMES)
    images = rng.integers(0, 70, (count, size, size, 3)).astype(np.uint8)
    side = size // 2
    for index, label in enumerate(labels):
        top, left = rng.integers(0, size - side, 2)
        images[index, top : top + side, left : left + side] = _COLOURS[label]
    return images, np.asarray(labels, dtype=np.int64)


def bright_squares_gray(count: int, seed: int, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale (count, size, size) images: class 1 has a bright square, class 0 a dark one."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = rng.integers(90, 150, (count, size, size)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 6:18, 6:18] = 245 if label == 1 else 10
    return images, labels.astype(np.int64)

"""Planted bad candidates: known failures the filter must catch, made from real images.

Used by :mod:`.evaluation` to measure the filter without a generator: each kind imitates
a way a generated image goes wrong.

* ``other_class``: a real image of another class labelled as the target class (the
  generator painted the wrong lesion).
* ``noise``: heavy Gaussian pixel noise (a diverged or under-sampled diffusion run).
* ``blur``: strong Gaussian blur (a washed-out sample).
* ``colour_shift``: colour channels rotated (RGB -> GBR) or, for grayscale, a strong
  gamma curve (a wrong colour or exposure the dataset never shows).
* ``exact_copy`` / ``flipped_copy``: a training image returned as is, or flipped or
  rotated (memorisation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OOD_KINDS: tuple[str, ...] = ("other_class", "noise", "blur", "colour_shift")
COPY_KINDS: tuple[str, ...] = ("exact_copy", "flipped_copy")

NOISE_STD = 80.0  # grey levels (of 255)
BLUR_SIGMA_FRACTION = 1 / 24  # of the image side: 2.7 px at 64 px
GRAYSCALE_GAMMA = 0.4


def add_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images plus N(0, NOISE_STD) noise, clipped to [0, 255]."""
    noisy = images.astype(np.float32) + rng.normal(0.0, NOISE_STD, images.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def blur(images: np.ndarray) -> np.ndarray:
    """Gaussian blur over height and width only (sigma = side / 24)."""
    sigma = BLUR_SIGMA_FRACTION * images.shape[1]
    spatial = (0, sigma, sigma) + (0,) * (images.ndim - 3)
    return (
        ndimage.gaussian_filter(images.astype(np.float32), sigma=spatial).round().astype(np.uint8)
    )


def shift_colour(images: np.ndarray) -> np.ndarray:
    """RGB rotated to GBR; grayscale (one channel) gamma-corrected with gamma 0.4."""
    if images.ndim == 4 and images.shape[3] == 3:
        return np.ascontiguousarray(images[..., [1, 2, 0]])
    scaled = (images.astype(np.float32) / 255.0) ** GRAYSCALE_GAMMA
    return (scaled * 255.0).round().astype(np.uint8)


def flip_or_rotate(images: np.ndarray) -> np.ndarray:
    """Each image horizontally flipped, vertically flipped, or rotated 90/180/270 degrees
    in turn (cycled by row), so all the usual memorised variants appear."""
    transforms = (
        lambda im: np.flip(im, axis=1),
        lambda im: np.flip(im, axis=0),
        lambda im: np.rot90(im, 1, axes=(0, 1)),
        lambda im: np.rot90(im, 2, axes=(0, 1)),
        lambda im: np.rot90(im, 3, axes=(0, 1)),
    )
    return np.stack(
        [
            np.ascontiguousarray(transforms[row % len(transforms)](im))
            for row, im in enumerate(images)
        ]
    )


def plant_bad_candidates(
    target_images: np.ndarray,
    other_class_images: np.ndarray,
    train_images: np.ndarray,
    *,
    per_kind: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Bad candidates for one target class, ``per_kind`` (or fewer) of each kind.

    Args:
        target_images: Held-out real images of the target class (N, H, W[, C]) uint8.
        other_class_images: Held-out real images of the other classes.
        train_images: Real training images of the target class (source of copies).
        per_kind: Maximum images per kind.
        rng: Random generator (which images are used, the noise).

    Returns:
        Kind -> uint8 images; kinds with no source images are left out. Flipped and
        rotated copies of square images keep the shape; non-square images get only
        horizontal/vertical flips so shapes stay consistent.
    """

    def pick(source: np.ndarray) -> np.ndarray:
        rows = rng.choice(len(source), size=min(per_kind, len(source)), replace=False)
        return source[np.sort(rows)]

    planted: dict[str, np.ndarray] = {}
    if len(other_class_images):
        planted["other_class"] = pick(other_class_images)
    if len(target_images):
        planted["noise"] = add_noise(pick(target_images), rng)
        planted["blur"] = blur(pick(target_images))
        planted["colour_shift"] = shift_colour(pick(target_images))
    if len(train_images):
        planted["exact_copy"] = pick(train_images).copy()
        sources = pick(train_images)
        if sources.shape[1] == sources.shape[2]:
            planted["flipped_copy"] = flip_or_rotate(sources)
        else:
            flips = [np.flip(im, axis=row % 2) for row, im in enumerate(sources)]
            planted["flipped_copy"] = np.ascontiguousarray(np.stack(flips))
    return planted

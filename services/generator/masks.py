"""Lesion masks for inpainting, and the choice of background images that receive lesions.

A mask is uint8 (H, W) with 255 where a lesion is painted and 0 where the source image is
kept. Masks come with the dataset or are segmented from the image: dermoscopic lesions
are darker than the surrounding skin, so Otsu's threshold on a darkness channel followed
by morphology finds them well enough to say *where* to paint (precision matters little:
the generator repaints the whole region).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology, transform

BackgroundPolicy = Literal["same_class", "any_class", "head_classes"]

# Components smaller than this fraction of the image are speckle (hair, pores).
_MIN_COMPONENT_FRACTION = 0.005
# Fallback ellipse when nothing is segmented: semi-axes as fractions of the side.
_FALLBACK_SEMI_AXES = (0.28, 0.22)


def darkness_channel(image: np.ndarray) -> np.ndarray:
    """Per-pixel darkness in [0, 1] of a uint8 (H, W) or (H, W, C) image.

    For RGB, 1 - luminance blended with a redness term: melanocytic and vascular lesions
    are darker *or* redder than skin, and luminance alone misses pale red lesions.
    """
    pixels = image.astype(np.float64) / 255.0
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return 1.0 - pixels.reshape(pixels.shape[0], pixels.shape[1])
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    redness = np.clip(red - (green + blue) / 2.0, 0.0, 1.0)
    return np.clip(0.8 * (1.0 - luminance) + 0.2 * redness, 0.0, 1.0)


def segment_lesion(image: np.ndarray, *, closing_radius: int | None = None) -> np.ndarray:
    """Segment the main lesion of one image; returns a uint8 (H, W) mask in {0, 255}.

    Steps: Otsu threshold on :func:`darkness_channel` -> opening/closing with a disk ->
    drop speckle -> keep the largest component, preferring ones that do not touch the
    border (dark vignetting corners of dermoscopes do) -> fill holes. When nothing
    survives, a centred ellipse is returned so a caller always gets a paintable region.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    height, width = image.shape[:2]
    darkness = darkness_channel(image)
    if float(darkness.max() - darkness.min()) < 1e-6:
        return _fallback_ellipse(height, width)
    foreground = darkness > filters.threshold_otsu(darkness)
    radius = closing_radius if closing_radius is not None else max(1, min(height, width) // 32)
    footprint = morphology.disk(radius)
    foreground = morphology.closing(morphology.opening(foreground, footprint),
                                           footprint)
    labels = measure.label(foreground, connectivity=2)
    min_area = _MIN_COMPONENT_FRACTION * height * width
    regions = [r for r in measure.regionprops(labels) if r.area >= min_area]
    if not regions:
        return _fallback_ellipse(height, width)
    interior = [r for r in regions if not _touches_border(r.bbox, height, width)]
    best = max(interior or regions, key=lambda r: r.area)
    lesion = ndimage.binary_fill_holes(labels == best.label)
    return (lesion * 255).astype(np.uint8)


def auto_masks(images: np.ndarray) -> np.ndarray:
    """:func:`segment_lesion` over a batch: (N, H, W[, C]) uint8 -> (N, H, W) uint8."""
    return np.stack([segment_lesion(image) for image in images])


def jitter_mask(
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_dilation: int = 3,
    max_rotation_deg: float = 30.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_shift_fraction: float = 0.08,
) -> np.ndarray:
    """Randomly dilate and deform a mask so painted lesions vary in shape and place.

    Args:
        mask: uint8 (H, W), nonzero = lesion.
        rng: seeded generator; the same seed gives the same mask.
        max_dilation: dilation radius drawn uniformly from [0, max_dilation] pixels.
        max_rotation_deg: rotation about the mask centre drawn from +-this, degrees.
        scale_range: isotropic scale factor range.
        max_shift_fraction: translation drawn from +-this fraction of the side.

    Returns:
        uint8 (H, W) in {0, 255}; never empty (falls back to the dilated input).
    """
    binary = mask > 0
    height, width = binary.shape
    radius = int(rng.integers(0, max_dilation + 1))
    if radius:
        binary = morphology.dilation(binary, morphology.disk(radius))
    angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
    scale = rng.uniform(*scale_range)
    shift = rng.uniform(-max_shift_fraction, max_shift_fraction, size=2) * (width, height)
    centre = np.array([width / 2.0, height / 2.0])
    # Rotate and scale about the centre, then shift: T(c + s) . R . S . T(-c).
    to_origin = transform.AffineTransform(translation=-centre)
    deform = transform.AffineTransform(scale=scale, rotation=angle)
    back = transform.AffineTransform(translation=centre + shift)
    warp = to_origin + deform + back
    warped = transform.warp(binary.astype(np.float64), warp.inverse, order=0,
                            preserve_range=True) > 0.5
    result = warped if warped.any() else binary
    return (result * 255).astype(np.uint8)


def select_background_indices(
    labels: np.ndarray,
    target_class: int,
    count: int,
    *,
    policy: BackgroundPolicy = "any_class",
    seed: int = 0,
    head_classes: Sequence[int] | None = None,
    head_fraction: float = 0.5,
) -> np.ndarray:
    """Indices of the real images that will receive a lesion of ``target_class``.

    Args:
        labels: (N,) int class ids of the candidate source images.
        target_class: class to be painted (used by ``"same_class"``).
        count: how many indices to return; sources are reused (sampled with
            replacement) only when there are fewer candidates than ``count``.
        policy: ``"same_class"`` - images of the target class; ``"any_class"`` - any
            image; ``"head_classes"`` - images of the most frequent classes, whose
            backgrounds are plentiful and varied (the tail has few backgrounds to offer).
        seed: seed of the draw.
        head_classes: explicit head classes; by default the most frequent classes that
            together hold ``head_fraction`` of the images.

    Returns:
        (count,) int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if policy == "same_class":
        candidates = np.flatnonzero(labels == target_class)
    elif policy == "any_class":
        candidates = np.arange(len(labels))
    elif policy == "head_classes":
        heads = list(head_classes) if head_classes is not None else _head_classes(labels,
                                                                                  head_fraction)
        candidates = np.flatnonzero(np.isin(labels, heads))
    else:
        raise ValueError(
            f"unknown background_policy {policy!r}; use 'same_class', 'any_class' or "
            f"'head_classes'"
        )
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if candidates.size == 0:
        raise ValueError(f"no source image matches background_policy={policy!r} "
                         f"for class {target_class}")
    rng = np.random.default_rng(seed)
    replace = candidates.size < count
    return rng.choice(candidates, size=count, replace=replace).astype(np.int64)


def _head_classes(labels: np.ndarray, head_fraction: float) -> list[int]:
    classes, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    cumulative = np.cumsum(counts[order]) / counts.sum()
    # Include classes until the fraction is reached (at least the largest one).
    n_heads = int(np.searchsorted(cumulative, head_fraction) + 1)
    return [int(c) for c in classes[order[:n_heads]]]


def _touches_border(bbox: tuple[int, ...], height: int, width: int) -> bool:
    min_row, min_col, max_row, max_col = bbox
    return min_row == 0 or min_col == 0 or max_row == height or max_col == width


def _fallback_ellipse(height: int, width: int) -> np.ndarray:
    rows, cols = np.ogrid[:height, :width]
    a, b = _FALLBACK_SEMI_AXES[0] * height, _FALLBACK_SEMI_AXES[1] * width
    inside = ((rows - height / 2.0) / a) ** 2 + ((cols - width / 2.0) / b) ** 2 <= 1.0
    return (inside * 255).astype(np.uint8)

"""Colour histograms: the palette check classifier features miss.

A class-conditional generator pushed by classifier-free guidance exaggerates what tells
its class apart, and for a class of 3 images that can leave the palette of the dataset
altogether: on the extreme-tail demo set, guidance 6 painted dermatofibromas as
saturated green blobs that no real image has a pixel of, and the real-data classifier
still called them DF with confidence (its features separate classes; they were never
trained to notice a colour that no class has). A joint colour histogram sees it at once.

Each image is summarised by the share of its pixels in each cell of a coarse colour grid
(8 levels per channel, 512 cells; 32 grey levels for one-channel images). The detector
(:class:`~services.ood_filter.detectors.ColourDetector`) turns the real training
images' histograms into a colour density and scores a candidate by how rare its rarest
pixels are.
"""

from __future__ import annotations

import numpy as np

#: Levels per channel of the colour grid (a power of two, so a shift bins a uint8 value).
RGB_LEVELS = 8
GREY_LEVELS = 32


def colour_bins(channels: int) -> int:
    """Number of histogram cells for images of ``channels`` (1 or 3) channels."""
    return RGB_LEVELS**3 if channels == 3 else GREY_LEVELS


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """Per-image share of pixels in each colour cell, (N, H, W[, C]) uint8 -> (N, bins) float32.

    Rows sum to 1. Three-channel images use an ``RGB_LEVELS``^3 grid over (R, G, B), in
    that order of significance; one-channel images ``GREY_LEVELS`` grey levels.
    """
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    n = len(images)
    if images.ndim == 3:
        cells = (images >> (8 - int(np.log2(GREY_LEVELS)))).reshape(n, -1).astype(np.int64)
        bins = GREY_LEVELS
    else:
        shift = 8 - int(np.log2(RGB_LEVELS))
        q = (images >> shift).astype(np.int64)
        cells = (q[..., 0] * RGB_LEVELS**2 + q[..., 1] * RGB_LEVELS + q[..., 2]).reshape(n, -1)
        bins = RGB_LEVELS**3
    offsets = (np.arange(n, dtype=np.int64) * bins)[:, None]
    counts = np.bincount((cells + offsets).ravel(), minlength=n * bins).reshape(n, bins)
    return (counts / cells.shape[1]).astype(np.float32)


def rarest_pixels_log_density(
    histograms: np.ndarray, log_density: np.ndarray, share: float
) -> np.ndarray:
    """Mean log density of each image's rarest ``share`` of pixels.

    Args:
        histograms: (N, bins) per-image pixel shares (rows sum to 1).
        log_density: (bins,) log density of the reference palette.
        share: The fraction of pixels averaged over, in (0, 1]: the ones whose colour
            is rarest under ``log_density`` (a lower tail mean, so a small patch of an
            unseen colour counts however typical the rest of the image is).

    Returns:
        (N,) float64; higher = every colour of the image is common in the reference.
    """
    order = np.argsort(log_density, kind="stable")
    sorted_log = log_density[order]
    mass = np.asarray(histograms, dtype=np.float64)[:, order]
    taken = np.minimum(np.cumsum(mass, axis=1), share)
    weights = np.diff(taken, axis=1, prepend=0.0)
    return (weights @ sorted_log) / share

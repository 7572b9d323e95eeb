"""Curated images at the asked resolution.

Candidates come out at the generator's resolution (32 px for the demo generator) while
the dataset's images may be larger (64 px); a curated set is used beside the real
images, so each kept candidate is delivered resampled to the curated set's side with a
named PIL filter. The copy stays marked synthetic, keeps the candidate's provenance in
its PNG text and adds how it was resized (``tailsynth:resized_from``,
``tailsynth:resize_method``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.imaging import decode_image, encode_synthetic_png, read_png_text

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample(pixels: np.ndarray, size: int, method: str) -> np.ndarray:
    """``pixels`` (H, W) or (H, W, 3) uint8 as ``size`` x ``size`` by ``method``.

    Raises:
        ValueError: ``method`` is not one of :data:`RESAMPLING`.
    """
    if method not in RESAMPLING:
        raise ValueError(f"unknown resize method {method!r}; use one of {', '.join(RESAMPLING)}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((size, size), resample=RESAMPLING[method]), dtype=np.uint8)


def curated_png(candidate_png: bytes, size: int, method: str) -> tuple[bytes, int]:
    """The curated copy of a candidate PNG at ``size`` px, and the candidate's own side.

    Returns the candidate's bytes unchanged when it already has that size.
    """
    pixels = decode_image(candidate_png).pixels
    side = int(pixels.shape[0])
    if pixels.shape[:2] == (size, size):
        return candidate_png, side
    text = read_png_text(candidate_png)
    text.update(
        {
            "tailsynth:resized_from": f"{pixels.shape[1]}x{pixels.shape[0]}",
            "tailsynth:resize_method": method,
        }
    )
    return encode_synthetic_png(resample(pixels, size, method), text), side

"""Perceptual hashes (imagehash pHash) that also recognise flipped and rotated copies.

A memorised training image can come back mirrored or rotated (both are standard
augmentations the generator saw), so a training image is hashed in all 8 orientations
of the square's symmetry group; a candidate is then hashed once and compared with all 8.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

N_ORIENTATIONS = 8
HASH_BITS = 64  # imagehash's default 8 x 8 pHash


def orientations(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of ``image`` ((H, W) or (H, W, C)); the first is ``image``."""
    rotated = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return rotated + [np.flip(view, axis=1) for view in rotated]


def _phash_uint64(image: np.ndarray) -> np.uint64:
    """pHash of one uint8 image as a 64-bit integer (bit order as imagehash flattens it)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(image))).hash.ravel()
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def perceptual_hashes(images: np.ndarray, *, all_orientations: bool) -> np.ndarray:
    """pHashes of a batch of uint8 images.

    Args:
        images: (N, H, W) or (N, H, W, C) uint8, C in {1, 3}.
        all_orientations: Hash every flip/rotation (for reference images) or only the
            image as given (for candidates).

    Returns:
        (N, 8) uint64 when ``all_orientations`` else (N, 1) uint64; column 0 is the
        image as given.
    """
    n_variants = N_ORIENTATIONS if all_orientations else 1
    hashes = np.empty((len(images), n_variants), dtype=np.uint64)
    for row, image in enumerate(images):
        views = orientations(image) if all_orientations else [image]
        hashes[row] = [_phash_uint64(view) for view in views]
    return hashes


def hamming_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between 64-bit hashes.

    Args:
        queries: (n,) uint64.
        references: (m,) uint64.

    Returns:
        (n, m) int distances in bits, 0-64.
    """
    xor = np.bitwise_xor(queries[:, None], references[None, :])
    return np.bitwise_count(xor).astype(np.int64)

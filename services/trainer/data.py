"""Turning uint8 images into classifier input: channel policy, resizing, augmentation, sampling.

Training and inference share :func:`prepare_image`, so a classifier sees pixels
resampled the same way whether it is being fitted or scored. Normalisation (mean/std)
is not done here: it belongs to the model (``timm.data.resolve_model_data_config``)
and is applied on the device in :mod:`services.trainer.classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler
from torchvision.transforms import v2

from shared.imaging import resize_square

# An image set is either one stacked array, (N, H, W) or (N, H, W, C), or a sequence of
# single images that may differ in size and aspect (e.g. straight from decode_image).
ImageSet = np.ndarray | Sequence[np.ndarray]

# ITU-R BT.601 luma weights: the same conversion PIL uses for "RGB" -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def prepare_image(pixels: np.ndarray, image_size: int, in_chans: int) -> np.ndarray:
    """One image as the classifier expects it, before normalisation.

    Args:
        pixels: uint8, (H, W) grayscale, (H, W, 1) or (H, W, 3) RGB; any size and aspect.
        image_size: output side in pixels; the image is resampled (bicubic, no crop) to a
            square, which is how the generator records its resampling too.
        in_chans: 1 or 3. Grayscale is replicated to 3 channels for an RGB model; RGB is
            converted to luma for a 1-channel model.

    Returns:
        uint8 array, shape (image_size, image_size, in_chans).
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        raise ValueError("RGBA images are not accepted; decode with shared.imaging.decode_image")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"an image must be (H, W) or (H, W, 3), got shape {pixels.shape}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")

    if pixels.shape[0] != image_size or pixels.shape[1] != image_size:
        pixels = resize_square(pixels, image_size)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if in_chans == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif in_chans == 1 and pixels.shape[2] == 3:
        luma = pixels.astype(np.float32) @ _LUMA
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    # A fresh, writable copy: PIL-backed arrays are read-only, and callers' arrays must
    # never be aliased by tensors that augmentation might write to.
    return np.array(pixels, dtype=np.uint8, order="C")


def prepare_batch(images: ImageSet, image_size: int, in_chans: int) -> torch.Tensor:
    """A batch as a uint8 tensor, shape (B, in_chans, image_size, image_size).

    ``images`` is an (N, H, W[, C]) uint8 array or a sequence of single images.
    """
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise ValueError(f"a batch must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    prepared = np.stack([prepare_image(image, image_size, in_chans) for image in images])
    return torch.from_numpy(prepared).permute(0, 3, 1, 2).contiguous()


def image_count(images: ImageSet) -> int:
    """Number of images in an :data:`ImageSet`."""
    return int(images.shape[0]) if isinstance(images, np.ndarray) else len(images)


def build_augmentation(image_size: int, *, vertical_flip: bool) -> v2.Transform:
    """Light, label-preserving augmentation for a (C, S, S) uint8 tensor.

    A mild random resized crop (75-100 % of the area, near-square) and a horizontal
    flip suit dermoscopy, fundus and chest X-ray alike. Vertical flips are opt-in:
    they are harmless for dermoscopy but put the heart of a chest X-ray upside down.
    """
    transforms: list[v2.Transform] = [
        v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if vertical_flip:
        transforms.append(v2.RandomVerticalFlip())
    return v2.Compose(transforms)


class LabelledImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Labelled images resampled lazily, so memory holds the originals only once.

    Items are (uint8 tensor (in_chans, S, S), class index). Augmentation, when given,
    runs per image so each one gets its own random crop and flip.
    """

    def __init__(
        self,
        images: ImageSet,
        labels: np.ndarray,
        *,
        image_size: int,
        in_chans: int,
        augmentation: v2.Transform | None = None,
    ) -> None:
        if image_count(images) != len(labels):
            raise ValueError(f"{image_count(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = image_size
        self.in_chans = in_chans
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = prepare_image(self.images[index], self.image_size, self.in_chans)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        if self.augmentation is not None:
            tensor = self.augmentation(tensor)
        return tensor, int(self.labels[index])


def class_balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights 1 / n_c, so every class is drawn equally often in expectation.

    Returns float64, shape (N,). Classes absent from ``labels`` simply get no samples.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return 1.0 / counts[labels]


def build_train_sampler(
    labels: np.ndarray,
    num_classes: int,
    *,
    balanced: bool,
    sample_weights: np.ndarray | None,
    seed: int,
) -> Sampler[int] | None:
    """The sampler for one training run, or None for a plain seeded shuffle.

    Args:
        labels: int class indices, shape (N,).
        balanced: draw classes equally often (the re-sampling baseline).
        sample_weights: optional non-negative per-sample weights, shape (N,), e.g. to
            draw synthetic images less often than real ones; multiplied with the class
            balancing when both are given.
        seed: seeds the sampler's own generator, so the draw order is reproducible.

    Returns:
        A ``WeightedRandomSampler`` drawing N indices with replacement per epoch, or
        None when neither balancing nor weights were asked for.
    """
    if not balanced and sample_weights is None:
        return None
    weights = np.ones(len(labels), dtype=np.float64)
    if balanced:
        weights *= class_balanced_weights(labels, num_classes)
    if sample_weights is not None:
        sample_weights = np.asarray(sample_weights, dtype=np.float64)
        if sample_weights.shape != (len(labels),):
            raise ValueError(
                f"sample_weights must have shape ({len(labels)},), got {sample_weights.shape}"
            )
        if (sample_weights < 0).any() or not np.isfinite(sample_weights).all():
            raise ValueError("sample_weights must be finite and non-negative")
        weights *= sample_weights
    if weights.sum() <= 0:
        raise ValueError("sample weights are all zero; nothing could be drawn")
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        weights.tolist(), num_samples=len(labels), replacement=True, generator=generator
    )

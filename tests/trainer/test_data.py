"""Channel policy, resampling and the training sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.trainer.data import (
    LabelledImageDataset,
    build_augmentation,
    build_train_sampler,
    prepare_batch,
    prepare_image,
)


def test_prepare_image_converts_channels_and_resamples_any_aspect() -> None:
    gray = np.full((30, 50), 200, dtype=np.uint8)
    as_rgb = prepare_image(gray, 16, in_chans=3)
    assert as_rgb.shape == (16, 16, 3) and as_rgb.dtype == np.uint8
    assert np.all(as_rgb == 200)

    red = np.zeros((20, 20, 3), dtype=np.uint8)
    red[..., 0] = 200
    as_gray = prepare_image(red, 20, in_chans=1)
    assert as_gray.shape == (20, 20, 1)
    assert np.all(as_gray == round(0.299 * 200))  # BT.601 luma, as PIL's "L" conversion

    single_channel = prepare_image(np.zeros((8, 8, 1), dtype=np.uint8), 8, in_chans=1)
    assert single_channel.shape == (8, 8, 1)


def test_prepare_image_returns_a_copy_it_owns() -> None:
    source = np.zeros((8, 8, 3), dtype=np.uint8)
    prepared = prepare_image(source, 8, in_chans=3)
    prepared[0, 0, 0] = 255
    assert source[0, 0, 0] == 0


def test_prepare_image_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(np.zeros((8, 8, 3), dtype=np.float32), 8, in_chans=3)
    with pytest.raises(ValueError, match="RGBA"):
        prepare_image(np.zeros((8, 8, 4), dtype=np.uint8), 8, in_chans=3)
    with pytest.raises(ValueError):
        prepare_image(np.zeros((8, 8, 2), dtype=np.uint8), 8, in_chans=3)


def test_prepare_batch_accepts_arrays_and_mixed_size_sequences() -> None:
    batch = prepare_batch(np.zeros((4, 10, 12, 3), dtype=np.uint8), 16, in_chans=3)
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.uint8
    mixed = [np.zeros((10, 30), dtype=np.uint8), np.zeros((40, 20, 3), dtype=np.uint8)]
    assert prepare_batch(mixed, 16, in_chans=1).shape == (2, 1, 16, 16)


def test_dataset_items_are_augmented_per_image_but_keep_shape() -> None:
    images = np.random.default_rng(0).integers(0, 255, (2, 20, 20, 3)).astype(np.uint8)
    torch.manual_seed(0)
    dataset = LabelledImageDataset(
        images,
        np.array([0, 1]),
        image_size=16,
        in_chans=3,
        augmentation=build_augmentation(16, vertical_flip=True),
    )
    first, label = dataset[1]
    second, _ = dataset[1]
    assert label == 1 and first.shape == (3, 16, 16) and first.dtype == torch.uint8
    assert not torch.equal(first, second)  # a fresh random crop/flip each time


def _drawn_labels(sampler: torch.utils.data.Sampler[int], labels: np.ndarray) -> np.ndarray:
    return labels[np.fromiter(iter(sampler), dtype=np.int64)]


def test_balanced_sampler_rebalances_a_long_tail() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sampler = build_train_sampler(labels, 3, balanced=True, sample_weights=None, seed=0)
    assert sampler is not None
    drawn = np.concatenate([_drawn_labels(sampler, labels) for _ in range(3)])
    fractions = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(fractions, [1 / 3] * 3, atol=0.03)  # was 0.90 / 0.09 / 0.01


def test_sample_weights_shape_the_draw_and_are_seeded() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    weights = np.where(labels == 1, 0.0, 1.0)  # e.g. exclude a synthetic subset
    sampler = build_train_sampler(labels, 2, balanced=False, sample_weights=weights, seed=0)
    assert sampler is not None
    assert set(_drawn_labels(sampler, labels)) == {0}
    assert build_train_sampler(labels, 2, balanced=False, sample_weights=None, seed=0) is None

    def order(seed: int) -> list[int]:
        sampler = build_train_sampler(labels, 2, balanced=True, sample_weights=None, seed=seed)
        assert sampler is not None
        return list(sampler)

    assert order(3) == order(3) and order(3) != order(4)
    with pytest.raises(ValueError):
        build_train_sampler(labels, 2, balanced=False, sample_weights=-weights - 1, seed=0)

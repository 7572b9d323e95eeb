from __future__ import annotations

import numpy as np
import pytest

from services.generator.masks import (
    auto_masks,
    jitter_mask,
    segment_lesion,
    select_background_indices,
)
from tests.generator.conftest import disc_mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum())


def test_auto_mask_finds_a_drawn_disc_on_noisy_skin_with_dark_corners() -> None:
    rng = np.random.default_rng(0)
    size = 32
    image = rng.normal(200, 12, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    truth = disc_mask(size, radius=8, centre=(15.0, 17.0))
    image[truth > 0] = (90, 60, 50)
    image[truth > 0] = image[truth > 0] + rng.integers(0, 20, (int((truth > 0).sum()), 3),
                                                       dtype=np.uint8)
    image[:3, :3] = 10  # vignetting corner: dark, but touches the border
    mask = segment_lesion(image)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert _iou(mask, truth) > 0.85
    assert not mask[:3, :3].any()


def test_auto_mask_works_on_grayscale_and_falls_back_on_blank_images() -> None:
    gray = np.full((32, 32), 220, np.uint8)
    truth = disc_mask(32, radius=7)
    gray[truth > 0] = 60
    assert _iou(segment_lesion(gray), truth) > 0.85
    blank = segment_lesion(np.full((32, 32, 3), 128, np.uint8))
    assert blank[16, 16] == 255 and blank[0, 0] == 0  # centred fallback ellipse
    assert auto_masks(np.stack([gray, gray])).shape == (2, 32, 32)


def test_jitter_is_seeded_and_changes_shape() -> None:
    base = disc_mask(32, radius=7)
    first = jitter_mask(base, np.random.default_rng(3), max_dilation=3)
    again = jitter_mask(base, np.random.default_rng(3), max_dilation=3)
    other = jitter_mask(base, np.random.default_rng(4), max_dilation=3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, base)
    assert first.any() and set(np.unique(first)) <= {0, 255}


def test_background_policies_pick_the_right_sources() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    same = select_background_indices(labels, 2, 6, policy="same_class", seed=1)
    assert set(labels[same]) == {2} and len(same) == 6  # reused: only two candidates
    heads = select_background_indices(labels, 2, 8, policy="head_classes", seed=1)
    assert set(labels[heads]) == {0}
    anyone = select_background_indices(labels, 2, 17, policy="any_class", seed=1)
    assert sorted(anyone) == list(range(17))  # without replacement when enough exist
    np.testing.assert_array_equal(
        select_background_indices(labels, 1, 5, policy="any_class", seed=9),
        select_background_indices(labels, 1, 5, policy="any_class", seed=9),
    )
    with pytest.raises(ValueError, match="unknown background_policy"):
        select_background_indices(labels, 1, 5, policy="nearby")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no source image"):
        select_background_indices(labels, 7, 1, policy="same_class")

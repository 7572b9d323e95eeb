"""Tiny generator fixtures: 16 px images, a (16, 32)-wide UNet, a few training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.generator.config import GeneratorConfig
from services.generator.sampling import TrainedGenerator, clear_generator_cache, load_generator
from services.generator.training import train_generator

SIZE = 16
CLASS_NAMES = ("nevus", "melanoma", "dermatofibroma")


def tiny_config(**overrides: object) -> GeneratorConfig:
    values: dict[str, object] = {
        "resolution": SIZE, "allow_tiny": True, "channels": 3, "num_classes": 3,
        "block_out_channels": (16, 32), "attention_levels": (), "batch_size": 4,
        "max_train_steps": 4, "checkpoint_every": 2, "lr_warmup_steps": 1,
        "num_train_timesteps": 100, "ema_decay": 0.9, "mixed_precision": "no",
    }
    values.update(overrides)
    return GeneratorConfig(**values)  # type: ignore[arg-type]


def disc_mask(size: int = SIZE, radius: float = 4.5, centre: tuple[float, float] | None = None
              ) -> np.ndarray:
    """uint8 (size, size) disc of 255 on 0."""
    cy, cx = centre if centre is not None else (size / 2 - 0.5, size / 2 - 0.5)
    rows, cols = np.ogrid[:size, :size]
    return (((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2) * 255).astype(np.uint8)


def make_dataset(n: int = 9, channels: int = 3, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skin-toned noise images with a dark disc per class colour; masks are the discs."""
    rng = np.random.default_rng(seed)
    images = rng.integers(150, 230, size=(n, SIZE, SIZE, channels), dtype=np.uint8)
    masks = np.stack([disc_mask(radius=3.5 + (i % 3)) for i in range(n)])
    labels = np.arange(n) % 3
    for image, mask, label in zip(images, masks, labels, strict=True):
        image[mask > 0] = 40 + 60 * label
    return images, masks, labels


@pytest.fixture(scope="session")
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_dataset()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory,
                       dataset: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
    images, masks, labels = dataset
    result = train_generator(images, masks, labels, CLASS_NAMES, tiny_config(),
                             tmp_path_factory.mktemp("generator"), device="cpu")
    assert result.checkpoint is not None
    return result.checkpoint.path


@pytest.fixture()
def generator(trained_checkpoint: Path) -> TrainedGenerator:
    clear_generator_cache()
    return load_generator(trained_checkpoint, device="cpu")

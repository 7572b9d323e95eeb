"""Session fixtures for the trainer tests (image builders live in ``tests.trainer.images``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.images import coloured_squares


@pytest.fixture(scope="session")
def train_set() -> tuple[np.ndarray, np.ndarray]:
    return coloured_squares(96, seed=0)


@pytest.fixture(scope="session")
def val_set() -> tuple[np.ndarray, np.ndarray]:
    return coloured_squares(48, seed=1)

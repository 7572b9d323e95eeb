"""Load a dataset split from storage as arrays for the workers' libraries.

The generator, filter and trainer libraries take numpy arrays; this is the one place
that turns rows and objects into them, resampled to the size a model needs. Only real
images are read here: synthetic images never enter a validation or test split.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import get_owned
from shared.errors import Conflict
from shared.imaging import decode_image, resize_square
from shared.models import Dataset, DatasetState, RealImage, Split
from shared.storage import ObjectStore


@dataclass
class SplitArrays:
    """Real images of one dataset split.

    ``images`` uint8 (N, S, S, C) with C = ``channels``; ``masks`` uint8 (N, S, S), 255 on
    the lesion, or None where the dataset has no masks; ``labels`` (N,) int64 into
    ``class_names``; ``image_ids`` the RealImage ids; ``groups`` patient/lesion ids, or
    each image's own id where the dataset has none.
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray
    image_ids: list[uuid.UUID]
    class_names: list[str]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def ready_dataset(
    session: Session, dataset_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> Dataset:
    dataset = get_owned(session, Dataset, dataset_id, tenant_id, "dataset", field="dataset_id")
    if dataset.state != DatasetState.READY:
        raise Conflict(
            f"dataset {dataset_id} is {dataset.state.value}, not ready", field="dataset_id"
        )
    return dataset


def dataset_channels(session: Session, dataset_id: uuid.UUID) -> int:
    """3 if any image is colour, else 1 (a grayscale modality stays one channel)."""
    colour = session.scalar(
        select(RealImage.id)
        .where(RealImage.dataset_id == dataset_id, RealImage.channels == 3)
        .limit(1)
    )
    return 3 if colour is not None else 1


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 as (H, W, ``channels``): luma for 1, gray repeated for 3."""
    if channels == 1:
        if pixels.ndim == 3:
            pixels = np.asarray(np.round(pixels @ np.array([0.299, 0.587, 0.114])), dtype=np.uint8)
        return pixels[:, :, None]
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def load_split(
    factory: sessionmaker[Session],
    store: ObjectStore,
    dataset_id: uuid.UUID,
    split: Split | None,
    size: int,
    *,
    channels: int | None = None,
    labels: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SplitArrays:
    """Read the real images of ``split`` (all splits if None), resampled to ``size``."""
    with factory() as session:
        dataset = ready_dataset(session, dataset_id)
        class_names = list(dataset.class_names)
        channels = channels or dataset_channels(session, dataset_id)
        query = select(RealImage).where(RealImage.dataset_id == dataset_id)
        if split is not None:
            query = query.where(RealImage.split == split)
        if labels is not None:
            query = query.where(RealImage.label.in_(labels))
        rows = list(session.scalars(query.order_by(RealImage.sha256)))
    n = len(rows)
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    has_masks = n > 0 and all(row.mask_key for row in rows)
    masks = np.zeros((n, size, size), dtype=np.uint8) if has_masks else None
    for i, row in enumerate(rows):
        pixels = decode_image(store.get_bytes(row.object_key)).pixels
        images[i] = to_channels(resize_square(pixels, size), channels)
        if masks is not None and row.mask_key:
            mask = decode_image(store.get_bytes(row.mask_key)).pixels
            mask = mask if mask.ndim == 2 else mask.max(axis=2)
            masks[i] = np.where(resize_square(mask, size, nearest=True) > 127, 255, 0)
        if progress and (i + 1) % 100 == 0:
            progress(i + 1, n)
    index = {name: k for k, name in enumerate(class_names)}
    return SplitArrays(
        images=images,
        masks=masks,
        labels=np.array([index[row.label] for row in rows], dtype=np.int64),
        image_ids=[row.id for row in rows],
        class_names=class_names,
        groups=[row.group_id or str(row.id) for row in rows],
    )

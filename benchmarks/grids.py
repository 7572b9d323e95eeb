"""PNG grids for the benchmarks: labelled rows of images (:func:`tile_rows`), and a
synthesis's real, kept and rejected images per class (:func:`write_grids`).

``write_grids`` reads the rows and objects a ``tailsynth serve --data-dir`` left behind
(its Postgres schema and its local object store), so a benchmark can show what it
measured; ``tile_rows`` needs only numpy and PIL (it runs on a bare GPU host too).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.imaging import decode_image, resize_square

GRID_COLUMNS = 8
TILE = 48


def database(data_dir: Path) -> Any:
    """A session factory on the database of the server that ran in ``data_dir``."""
    from shared.db import make_engine, make_session_factory
    from shared.settings import Settings

    return make_session_factory(make_engine(Settings(data_dir=data_dir.resolve())))


def candidates_of(data_dir: Path, synthesis_id: str) -> list[Any]:
    """Every candidate of a synthesis (``SyntheticImage`` rows), in generation order."""
    from sqlalchemy import select

    from shared.models import SyntheticImage

    with database(data_dir)() as session:
        return list(
            session.scalars(
                select(SyntheticImage)
                .where(SyntheticImage.synthesis_id == uuid.UUID(synthesis_id))
                .order_by(SyntheticImage.index_in_request)
            )
        )


def real_rows(data_dir: Path, dataset_id: str | uuid.UUID, *splits: Any) -> list[Any]:
    """The real images (``RealImage`` rows) of a dataset in the given ``Split``s."""
    from sqlalchemy import select

    from shared.models import RealImage

    with database(data_dir)() as session:
        return list(
            session.scalars(
                select(RealImage).where(
                    RealImage.dataset_id == uuid.UUID(str(dataset_id)),
                    RealImage.split.in_(splits),
                )
            )
        )


def pixels(data_dir: Path, key: str, size: int = TILE) -> np.ndarray:
    """A stored image as (size, size, 3) uint8 (grayscale repeated into RGB)."""
    return _tile(decode_image((data_dir / "objects" / key).read_bytes()).pixels, size)


def _tile(image: np.ndarray, size: int = TILE) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> (size, size, 3), grayscale repeated into RGB."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return resize_square(image, size)


def tile_rows(rows: list[tuple[str, list[np.ndarray]]], out: Path,
              label_width: int = 150) -> Path:
    """One PNG of labelled rows: each row its title, then up to GRID_COLUMNS images."""
    canvas = Image.new("RGB", (label_width + GRID_COLUMNS * TILE, len(rows) * TILE), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (title, images) in enumerate(rows):
        y = row * TILE
        draw.text((4, y + TILE // 3), title, fill="black")
        for column, image in enumerate(images[:GRID_COLUMNS]):
            canvas.paste(Image.fromarray(_tile(image)), (label_width + column * TILE, y))
    canvas.save(out)
    return out


def write_grids(
    data_dir: Path, dataset_id: str, synthesis_id: str, classes: list[str], name: str
) -> Path:
    """One PNG: per class three rows — real train images, kept, rejected (with reason)."""
    from shared.models import Split

    real = real_rows(data_dir, dataset_id, Split.TRAIN)
    candidates = candidates_of(data_dir, synthesis_id)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for label in classes:
        mine = [c for c in candidates if c.label == label]
        groups = [
            ("real", [r.object_key for r in real if r.label == label]),
            ("kept", [c.object_key for c in mine if c.decision == "kept"]),
            ("rejected", [c.object_key for c in mine if c.decision != "kept"]),
        ]
        for title, keys in groups:
            rows.append((f"{label} {title} ({len(keys)})",
                         [pixels(data_dir, key) for key in keys[:GRID_COLUMNS]]))
    return tile_rows(rows, data_dir / name)


def synthesis_of(data_dir: Path, curated_set_id: str) -> str:
    """The id of the synthesis request that filled a curated set."""
    from sqlalchemy import select

    from shared.models import SynthesisRequest

    with database(data_dir)() as session:
        request = session.scalars(
            select(SynthesisRequest).where(
                SynthesisRequest.curated_set_id == uuid.UUID(curated_set_id)
            )
        ).one()
        return str(request.id)

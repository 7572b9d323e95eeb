"""PNG grids of a synthesis for the benchmarks: real, kept and rejected images per class.

Reads the rows and objects a ``tailsynth serve --data-dir`` left behind (its Postgres
schema and its local object store), so a benchmark can show what it measured.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import select

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
    from shared.models import SyntheticImage

    with database(data_dir)() as session:
        return list(
            session.scalars(
                select(SyntheticImage)
                .where(SyntheticImage.synthesis_id == uuid.UUID(synthesis_id))
                .order_by(SyntheticImage.index_in_request)
            )
        )


def pixels(data_dir: Path, key: str, size: int = TILE) -> np.ndarray:
    """A stored image as (size, size, 3) uint8 (grayscale repeated into RGB)."""
    image = decode_image((data_dir / "objects" / key).read_bytes()).pixels
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return resize_square(image, size)


def write_grids(
    data_dir: Path, dataset_id: str, synthesis_id: str, classes: list[str], name: str
) -> Path:
    """One PNG: per class three rows — real train images, kept, rejected (with reason)."""
    from shared.models import RealImage, Split

    with database(data_dir)() as session:
        real = list(
            session.scalars(
                select(RealImage).where(
                    RealImage.dataset_id == uuid.UUID(dataset_id), RealImage.split == Split.TRAIN
                )
            )
        )
    candidates = candidates_of(data_dir, synthesis_id)
    label_width = 150
    height = len(classes) * 3 * TILE
    canvas = Image.new("RGB", (label_width + GRID_COLUMNS * TILE, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label in classes:
        mine = [c for c in candidates if c.label == label]
        groups = [
            ("real", [r.object_key for r in real if r.label == label]),
            ("kept", [c.object_key for c in mine if c.decision == "kept"]),
            ("rejected", [c.object_key for c in mine if c.decision != "kept"]),
        ]
        for title, keys in groups:
            draw.text((4, y + TILE // 3), f"{label} {title} ({len(keys)})", fill="black")
            for column, key in enumerate(keys[:GRID_COLUMNS]):
                tile = Image.fromarray(pixels(data_dir, key))
                canvas.paste(tile, (label_width + column * TILE, y))
            y += TILE
    out = data_dir / name
    canvas.save(out)
    return out


def synthesis_of(data_dir: Path, curated_set_id: str) -> str:
    """The id of the synthesis request that filled a curated set."""
    from shared.models import SynthesisRequest

    with database(data_dir)() as session:
        request = session.scalars(
            select(SynthesisRequest).where(
                SynthesisRequest.curated_set_id == uuid.UUID(curated_set_id)
            )
        ).one()
        return str(request.id)

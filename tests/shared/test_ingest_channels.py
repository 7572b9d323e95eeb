"""Grayscale content stored as RGB files is found at ingest and the dataset recorded as
one channel. Embedded deployment (SQLite, local store): the ingest job's body runs on
a directory of images, as the worker runs it on an extracted archive."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.dataset_arrays import dataset_channels, load_split
from shared.db import make_engine, make_session_factory, session_scope
from shared.ingest.archive import listing_from_directory
from shared.ingest.formats import build_plan
from shared.ingest.service import content_channels, ingest_directory
from shared.jobs import JobContext, create_job
from shared.models import Dataset, RealImage, Tenant
from shared.settings import Settings
from shared.storage import make_store

SIZE = 24


def _radiograph(seed: int) -> np.ndarray:
    """uint8 (S, S) gray: a bright body on a dark background, with noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:SIZE, :SIZE]
    body = ((rows - SIZE / 2) ** 2 / 80 + (cols - SIZE / 2) ** 2 / 40 <= 1) * 140
    return np.clip(body + rng.normal(50, 12, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _write_set(root: Path, colour: bool) -> None:
    """imagefolder layout, 10 images per class: gray content saved as RGB PNG and RGB JPEG
    (the way chest X-rays are often exported), or skin-coloured images."""
    for label in ("normal", "opacity"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            gray = _radiograph(seed=i + (100 if label == "opacity" else 0))
            rgb = np.repeat(gray[..., None], 3, axis=2)
            if colour:
                rgb = (rgb * np.array([1.0, 0.8, 0.7])).astype(np.uint8)
            fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            (root / label / f"{i}.{suffix}").write_bytes(_encode(rgb, fmt))


def _ingest(settings: Settings, root: Path) -> uuid.UUID:
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as session:
            tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
            session.add(tenant)
            session.flush()
            dataset = Dataset(tenant_id=tenant.id, name="cxr", format="imagefolder")
            session.add(dataset)
            session.flush()
            job = create_job(
                session, tenant_id=tenant.id, kind="ingest", task_name="tailsynth.ingest_dataset"
            )
            dataset_id, job_id = dataset.id, job.id
        plan = build_plan(listing_from_directory(root), "imagefolder")
        ingest_directory(
            JobContext(job_id, factory),
            factory,
            make_store(settings),
            settings,
            dataset_id,
            root,
            plan,
        )
        return dataset_id
    finally:
        engine.dispose()


def test_gray_content_stored_as_rgb_is_recorded_as_one_channel(
    local_settings: Settings, tmp_path: Path
) -> None:
    _write_set(tmp_path / "files", colour=False)
    dataset_id = _ingest(local_settings, tmp_path / "files")
    engine = make_engine(local_settings)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            report = dataset.ingest_report
            channels = {
                row.channels for row in session.query(RealImage).filter_by(dataset_id=dataset_id)
            }
            assert dataset_channels(session, dataset_id) == 1
        assert channels == {1}
        assert report["channels"] == 1 and report["grayscale_stored_as_rgb"] == 20
        assert "recorded and modelled as 1 channel" in report["channels_note"]
        # The generator, filter and trainer read it as one channel.
        train = load_split(factory, make_store(local_settings), dataset_id, None, 16)
        assert train.images.shape == (20, 16, 16, 1)
    finally:
        engine.dispose()


def test_colour_images_stay_three_channels(local_settings: Settings, tmp_path: Path) -> None:
    _write_set(tmp_path / "files", colour=True)
    dataset_id = _ingest(local_settings, tmp_path / "files")
    engine = make_engine(local_settings)
    try:
        with make_session_factory(engine)() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            assert dataset_channels(session, dataset_id) == 3
            assert dataset.ingest_report["channels"] == 3
            assert dataset.ingest_report["grayscale_stored_as_rgb"] == 0
            assert "channels_note" not in dataset.ingest_report
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("pixels", "channels"),
    [
        (np.zeros((4, 4), np.uint8), 1),
        (np.full((4, 4, 3), 90, np.uint8), 1),
        (np.dstack([np.full((4, 4), 90)] * 2 + [np.full((4, 4), 93)]).astype(np.uint8), 1),
        (np.dstack([np.full((4, 4), 90)] * 2 + [np.full((4, 4), 94)]).astype(np.uint8), 3),
    ],
)
def test_content_channels_tolerates_jpeg_round_off_only(pixels: np.ndarray, channels: int) -> None:
    assert content_channels(pixels) == channels

"""An upload holds no database connection while its archive is spooled, checked and
stored, and a label file over the cap is refused naming the entry (issue 10, item 8)."""

from __future__ import annotations

import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
from fastapi import UploadFile
from sqlalchemy import select
from sqlalchemy.engine import Engine

from services.api.routers import datasets
from shared.imaging import encode_png
from shared.models import Dataset
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.conftest import ApiHarness
from tests.fixtures.curated import app_state, harness

STORE_DELAY_S = 0.5


@pytest.fixture
def api(service_settings: Settings) -> Iterator[ApiHarness]:
    yield from harness(service_settings)


def imagefolder_zip(path: Path, files: dict[str, bytes] | None = None) -> Path:
    png = encode_png(np.zeros((8, 8, 3), dtype=np.uint8))
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("NV/a.png", "NV/b.png", "MEL/c.png"):
            archive.writestr(name, png)
        for name, data in (files or {}).items():
            archive.writestr(name, data)
    return path


class SlowStore:
    """The app's store, whose uploads take ``STORE_DELAY_S`` (a slow S3) and note how
    many pool connections are checked out while they run."""

    def __init__(self, store: ObjectStore, engine: Engine, seen: list[int]) -> None:
        self._store, self._engine, self._seen = store, engine, seen

    def put_stream(self, key: str, stream: BinaryIO, length: int = -1, **kwargs: Any) -> None:
        self._seen.append(self._engine.pool.checkedout())  # type: ignore[attr-defined]
        time.sleep(STORE_DELAY_S)
        self._store.put_stream(key, stream, length, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_upload_releases_its_connection_while_spooling_and_storing(
    api: ApiHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = app_state(api)
    engine: Engine = state.sessions.kw["bind"]
    seen: list[int] = []
    monkeypatch.setattr(state, "store", SlowStore(state.store, engine, seen))
    spool = datasets._spool_upload

    def watched_spool(upload: UploadFile, target: Path, max_bytes: int) -> str:
        seen.append(engine.pool.checkedout())  # type: ignore[attr-defined]
        return spool(upload, target, max_bytes)

    monkeypatch.setattr(datasets, "_spool_upload", watched_spool)
    archive = imagefolder_zip(tmp_path / "set.zip")

    started = time.monotonic()
    with archive.open("rb") as handle:
        answer = api.client.post(
            "/v1/datasets",
            data={"name": "slow"},
            files={"file": ("set.zip", handle, "application/zip")},
        )
    elapsed = time.monotonic() - started

    assert answer.status_code == 202, answer.text
    assert elapsed >= STORE_DELAY_S
    # While spooling and during the slow store write: no connection checked out.
    assert seen == [0, 0]
    dataset_id = uuid.UUID(answer.json()["dataset_id"])
    assert api.rows(select(Dataset.name).where(Dataset.id == dataset_id)) == [("slow",)]
    print(f"pool connections checked out while spooling / storing: {seen}")  # noqa: T201


def test_a_label_file_over_the_cap_is_refused_naming_it(
    service_settings: Settings, tmp_path: Path
) -> None:
    capped = service_settings.model_copy(update={"max_label_file_bytes": 1024})
    rows = "path,label\n" + "NV/a.png,NV\n" * 200  # 2.4 kB
    archive = imagefolder_zip(tmp_path / "big-csv.zip", {"labels/manifest.csv": rows.encode()})
    for api in harness(capped):
        with archive.open("rb") as handle:
            answer = api.client.post(
                "/v1/datasets",
                data={"name": "big csv"},
                files={"file": ("big-csv.zip", handle, "application/zip")},
            )
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["file"] == "labels/manifest.csv"
        assert "max_label_file_bytes" in answer.json()["detail"]

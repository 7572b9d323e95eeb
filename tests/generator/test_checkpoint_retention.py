"""Checkpoint retention and scratch cleanup (issue 10, item 11): storage and scratch keep
the newest N checkpoints (and a protected one), an older one is deleted only once a newer
one is complete in storage, and what killed runs left on scratch is swept at task start
without touching a live run's files."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from services.generator.checkpoint import (
    MANIFEST_FILE,
    CheckpointInfo,
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    retained_steps,
)
from services.generator.scratch import sweep_leftovers, sweep_scratch
from services.generator.service import _CheckpointMirror
from services.generator.training import train_generator
from shared.runtime import Runtime
from shared.settings import Settings
from shared.storage import LocalObjectStore
from tests.generator.conftest import CLASS_NAMES, make_dataset, tiny_config

GENERATOR_ID = uuid.UUID(int=11)


class RecordingStore(LocalObjectStore):
    """A local object store that logs each manifest written and each object deleted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str]] = []

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        super().put_bytes(key, data, content_type)
        if key.endswith(MANIFEST_FILE):
            self.events.append(("stored", key.split("/")[-2]))

    def delete(self, key: str) -> None:
        self.events.append(("deleted", key))
        super().delete(key)


def _mirror(
    store: LocalObjectStore, scratch: Path, keep: int, protect: tuple[int, ...] = ()
) -> _CheckpointMirror:
    runtime = cast(Runtime, SimpleNamespace(store=store))
    return _CheckpointMirror(runtime, scratch, GENERATOR_ID, keep=keep, protect=protect)


def _steps(scratch: Path) -> list[int]:
    return [c.step for c in list_checkpoints(scratch)]


def test_retention_keeps_the_newest_n_and_the_protected_ones() -> None:
    assert retained_steps([2, 4, 6, 8], keep=2) == {6, 8}
    assert retained_steps([8, 2, 6, 4], keep=1, protect=[2]) == {2, 8}
    assert retained_steps([2, 4], keep=5) == {2, 4}
    assert retained_steps([2, 4], keep=1, protect=[10]) == {4}  # only stored ones
    with pytest.raises(ValueError, match="at least 1"):
        retained_steps([2], keep=0)


def test_training_keeps_the_last_n_in_storage_and_scratch_deleting_only_after_upload(
    tmp_path: Path,
) -> None:
    store = RecordingStore(tmp_path / "objects")
    scratch = tmp_path / "scratch"
    mirror = _mirror(store, scratch, keep=2)
    local_at_upload: list[list[int]] = []

    def upload(info: CheckpointInfo) -> None:
        local_at_upload.append(_steps(scratch))  # what scratch holds before pruning
        mirror.upload(info)

    images, masks, labels = make_dataset()
    result = train_generator(
        images,
        masks,
        labels,
        CLASS_NAMES,
        tiny_config(max_train_steps=8, checkpoint_every=2, keep_checkpoints=2),
        scratch,
        device="cpu",
        on_checkpoint=upload,
    )
    assert result.status == "completed" and result.step == 8
    assert _steps(scratch) == [6, 8] and mirror.stored_steps() == [8, 6]
    # Scratch still held the older ones while each new checkpoint was uploaded.
    assert local_at_upload == [[2], [2, 4], [2, 4, 6], [4, 6, 8]]
    stored_objects = {key.split("/")[3] for key in store.list_keys(mirror.prefix + "/")}
    assert stored_objects == {checkpoint_name(6), checkpoint_name(8)}
    # Each stored checkpoint is deleted (manifest first) only after a newer one is stored.
    for index, (event, key) in enumerate(store.events):
        if event != "deleted":
            continue
        name = key.split("/")[3]
        newer = [n for e, n in store.events[:index] if e == "stored" and n > name]
        assert newer, f"{key} deleted before a newer checkpoint was stored"
    first_deletes = {}
    for event, key in store.events:
        if event == "deleted":
            first_deletes.setdefault(key.split("/")[3], key)
    assert all(key.endswith(MANIFEST_FILE) for key in first_deletes.values())
    assert sorted(first_deletes) == [checkpoint_name(2), checkpoint_name(4)]


def test_a_failed_upload_deletes_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    uploads: list[int] = []

    def storage_down_after_two(info: CheckpointInfo) -> None:
        if len(uploads) == 2:
            raise ConnectionError("storage unreachable")
        uploads.append(info.step)

    images, masks, labels = make_dataset()
    with pytest.raises(ConnectionError):
        train_generator(
            images,
            masks,
            labels,
            CLASS_NAMES,
            tiny_config(max_train_steps=8, checkpoint_every=2, keep_checkpoints=1),
            scratch,
            device="cpu",
            on_checkpoint=storage_down_after_two,
        )
    # Step 6 could not be stored: step 4, the newest stored, is still on scratch too.
    assert uploads == [2, 4] and _steps(scratch) == [4, 6]


def test_storage_prune_keeps_the_protected_checkpoint_and_drops_torn_uploads(
    tmp_path: Path,
) -> None:
    store = RecordingStore(tmp_path / "objects")
    scratch = tmp_path / "scratch"
    images, masks, labels = make_dataset()
    train_generator(
        images,
        masks,
        labels,
        CLASS_NAMES,
        tiny_config(max_train_steps=6, checkpoint_every=2, keep_checkpoints=3),
        scratch,
        device="cpu",
        on_checkpoint=_mirror(store, scratch, keep=3).upload,
    )
    prefix = f"generators/{GENERATOR_ID}/checkpoints"
    store.put_bytes(f"{prefix}/{checkpoint_name(1)}/training_state.pt", b"torn")  # no manifest
    store.put_bytes(f"{prefix}/{checkpoint_name(7)}/training_state.pt", b"in flight")
    mirror = _mirror(store, scratch, keep=1, protect=(2,))
    assert mirror.prune() == [1, 4]
    assert mirror.stored_steps() == [6, 2]
    # A partial upload newer than every complete checkpoint may be one in progress.
    assert store.exists(f"{prefix}/{checkpoint_name(7)}/training_state.pt")
    assert prune_checkpoints(scratch, keep=1, protect=[2]) == [4]
    assert _steps(scratch) == [2, 6]


def _age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(Path(root) / name, (moment, moment))
    os.utime(path, (moment, moment))


def test_sweep_deletes_only_leftovers_older_than_the_lease(tmp_path: Path) -> None:
    settings = Settings(environment="test", data_dir=tmp_path / "data", job_lease_s=600)
    scratch = settings.data_dir / "scratch" / "generators" / str(GENERATOR_ID)
    complete = scratch / checkpoint_name(4)
    complete.mkdir(parents=True)
    (complete / MANIFEST_FILE).write_text("{}")
    killed_write = scratch / f".tmp-{checkpoint_name(6)}-4242"
    killed_write.mkdir()
    (killed_write / "training_state.pt").write_bytes(b"half")
    retired = scratch / f".old-{checkpoint_name(2)}-4242-abcd1234"
    retired.mkdir()
    live_write = scratch / f".tmp-{checkpoint_name(8)}-77"
    (live_write / "unet").mkdir(parents=True)
    (live_write / "unet" / "config.json").write_text("{}")
    cache = settings.data_dir / "cache" / "classifiers" / "ds"
    cache.mkdir(parents=True)
    killed_download = cache / ".tmp-model.safetensors-4242-deadbeef"
    killed_download.write_bytes(b"partial")
    live_download = cache / ".tmp-model.safetensors-77-feedface"
    live_download.write_bytes(b"growing")
    finished = cache / "model.safetensors"
    finished.write_bytes(b"complete")

    for path in (
        complete,
        killed_write,
        retired,
        live_write,
        killed_download,
        live_download,
        finished,
    ):
        _age(path, 3600)
    # A live run touched a file inside its staging dir a moment ago; a live download
    # grows its partial file.
    os.utime(live_write / "unet" / "config.json")
    os.utime(live_download)

    deleted = sweep_scratch(settings)
    assert sorted(deleted) == sorted([killed_write, retired, killed_download])
    for kept in (complete, live_write, live_download, finished):
        assert kept.exists(), kept
    assert sweep_scratch(settings) == []  # nothing left to sweep
    assert sweep_leftovers(tmp_path / "missing", 1) == []

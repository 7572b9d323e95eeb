"""Checkpoints travel between hosts through storage: named one way, installed only when
complete and verified (a killed or corrupt download is never trusted), and a training
run on a fresh scratch directory resumes from the newest stored checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from services.generator.checkpoint import (
    MANIFEST_FILE,
    checkpoint_name,
    checkpoint_step,
    install_checkpoint,
    latest_checkpoint,
    list_checkpoints,
)
from services.generator.service import _CheckpointMirror, _pull_checkpoint
from services.generator.training import train_generator
from shared.runtime import Runtime
from shared.storage import LocalObjectStore
from tests.generator.conftest import CLASS_NAMES, make_dataset, tiny_config

GENERATOR_ID = uuid.UUID(int=7)


def _runtime(root: Path) -> Runtime:
    return cast(Runtime, SimpleNamespace(store=LocalObjectStore(root)))


def _stopped_run(scratch: Path, runtime: Runtime, steps: int) -> _CheckpointMirror:
    """Host A: train, mirroring each checkpoint to storage, and stop after ``steps``."""
    images, masks, labels = make_dataset()
    mirror = _CheckpointMirror(runtime, scratch, GENERATOR_ID, keep=2)
    polls: list[int] = []
    result = train_generator(
        images,
        masks,
        labels,
        CLASS_NAMES,
        tiny_config(max_train_steps=6, checkpoint_every=2),
        scratch,
        device="cpu",
        progress=lambda step, total: mirror.sync(),
        should_cancel=lambda: polls.append(1) or len(polls) >= steps,
    )
    assert result.status == "canceled" and result.step == steps
    mirror.sync()
    return mirror


def test_the_name_of_a_step_is_spelled_once() -> None:
    assert checkpoint_name(16) == "checkpoint-00000016"
    assert checkpoint_step(checkpoint_name(16)) == 16
    for name in ("checkpoint-16", "checkpoint-", "checkpoint-0000001x", ".tmp-checkpoint-1"):
        assert checkpoint_step(name) is None


def test_training_resumes_from_storage_on_a_fresh_scratch_dir(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path / "objects")
    first = _stopped_run(tmp_path / "host-a", runtime, steps=4)
    assert first.stored_steps() == [4, 2]

    fresh = tmp_path / "host-b"  # another host: nothing local
    mirror = _CheckpointMirror(runtime, fresh, GENERATOR_ID, keep=2)
    pulled = mirror.restore()
    assert pulled is not None and pulled.step == 4 and pulled.path.name == checkpoint_name(4)
    assert [c.step for c in list_checkpoints(fresh)] == [4]
    images, masks, labels = make_dataset()
    resumed = train_generator(
        images,
        masks,
        labels,
        CLASS_NAMES,
        tiny_config(max_train_steps=6, checkpoint_every=2),
        fresh,
        device="cpu",
    )
    assert resumed.status == "completed" and resumed.resumed_from_step == 4
    assert [s for s, _ in resumed.loss_curve] == [1, 2, 3, 4, 5, 6]
    assert mirror.restore() is None  # the local checkpoint is now the newest


def test_a_corrupt_stored_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path / "objects")
    _stopped_run(tmp_path / "host-a", runtime, steps=4)
    stored = tmp_path / "objects" / "generators" / str(GENERATOR_ID) / "checkpoints"
    state = stored / checkpoint_name(4) / "training_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a torn upload

    fresh = tmp_path / "host-b"
    pulled = _CheckpointMirror(runtime, fresh, GENERATOR_ID, keep=2).restore()
    assert pulled is not None and pulled.step == 2
    assert [c.step for c in list_checkpoints(fresh)] == [2]
    assert [p.name for p in fresh.iterdir()] == [checkpoint_name(2)]  # no staging left


def test_an_interrupted_download_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path / "objects")
    host_a = tmp_path / "host-a"
    _stopped_run(host_a, runtime, steps=2)
    source = latest_checkpoint(host_a)
    assert source is not None
    target = tmp_path / "cache" / source.path.name

    def manifest_then_stop(staging: Path) -> None:
        # Storage lists manifest.json before training_state.pt and unet/: a download
        # stopped there used to leave a directory every later task trusted.
        shutil.copy(source.path / MANIFEST_FILE, staging / MANIFEST_FILE)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        install_checkpoint(target, manifest_then_stop)
    assert not target.exists() and list(target.parent.iterdir()) == []

    with pytest.raises(ValueError, match="missing"):
        install_checkpoint(
            target,
            lambda staging: shutil.copy(source.path / MANIFEST_FILE, staging / MANIFEST_FILE),
        )
    assert not target.exists()


def _download_and_die(runtime_root: Path, key: str, target: Path) -> None:
    store = LocalObjectStore(runtime_root)
    real = store.download_to
    seen: list[str] = []

    def download_to(object_key: str, path: Path) -> None:
        real(object_key, path)
        seen.append(object_key)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    store.download_to = download_to  # type: ignore[method-assign]
    _pull_checkpoint(cast(Runtime, SimpleNamespace(store=store)), key, target)


def test_a_worker_killed_mid_download_is_not_trusted_and_the_next_pull_succeeds(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path / "objects")
    mirror = _stopped_run(tmp_path / "host-a", runtime, steps=2)
    key = f"{mirror.prefix}/{checkpoint_name(2)}"
    fresh = tmp_path / "host-b"
    child = multiprocessing.get_context("fork").Process(
        target=_download_and_die, args=(tmp_path / "objects", key, fresh / checkpoint_name(2))
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert latest_checkpoint(fresh) is None  # the killed copy is hidden staging only
    assert not (fresh / checkpoint_name(2)).exists()
    pulled = _CheckpointMirror(runtime, fresh, GENERATOR_ID, keep=2).restore()
    assert pulled is not None and pulled.step == 2 and latest_checkpoint(fresh) == pulled

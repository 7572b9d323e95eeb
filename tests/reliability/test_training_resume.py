"""Fault suite (2), issue 10: a whole worker SIGKILLed mid-training (main process and
pool child at once, nothing left to requeue its message), its job re-sent by the reaper
once the lease runs out, and taken by a new worker on a *fresh* scratch directory (as on
another host): training resumes from the newest checkpoint in storage and does not redo
the steps before it.

tests/api/test_synthesis_service.py kills only the pool child and deletes the scratch
directory of the same worker; here the first worker's scratch is simply never seen again.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from services.generator.checkpoint import MANIFEST_FILE, list_checkpoints
from services.generator.service import checkpoint_prefix
from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.imaging import encode_png
from shared.jobs import reap
from shared.models import RealImage
from shared.settings import Settings
from shared.storage import make_store
from tests.conftest import ApiHarness, _harness
from tests.fixtures.rows import ready_dataset
from tests.fixtures.services import ManagedProcess, start_worker, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.service]

LEASE_S = 4
KEEP = 2
TRAINING = {
    "resolution": 32,
    "block_out_channels": [16, 32],
    "attention_levels": [],
    "max_train_steps": 80,
    "batch_size": 4,
    "checkpoint_every": 20,
    "mixed_precision": "no",
    "ema_decay": 0.9,
}


@pytest.fixture
def host_settings(
    service_settings: Settings, redis_prefix: str, tmp_path: Path
) -> Iterator[dict[str, Settings]]:
    """Settings of two hosts on the session's Postgres, Redis and S3, with a broker
    prefix of their own (no other worker takes the job), a short lease, and each its own
    data directory (scratch and cache)."""
    shared = service_settings.model_copy(
        update={
            "broker_key_prefix": f"{redis_prefix}resume-{uuid.uuid4().hex[:6]}:",
            "job_lease_s": LEASE_S,
            "generator_keep_checkpoints": KEEP,
        }
    )
    yield {
        name: shared.model_copy(update={"data_dir": tmp_path / f"host-{name}"})
        for name in ("a", "b")
    }


@pytest.fixture
def api(host_settings: dict[str, Settings]) -> Iterator[ApiHarness]:
    """The API of host A (its reaper off: the test runs it when it means to)."""
    yield from _harness(host_settings["a"])


def _worker(settings: Settings, log_dir: Path) -> ManagedProcess:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.environ(), "OMP_NUM_THREADS": "1"}
    return start_worker(log_dir, env, queues="generate")


def _store_dataset_images(api: ApiHarness, dataset_id: str) -> None:
    """Put a 16 px PNG at the object key of each image row (the rows fixture stores none)."""
    store = make_store(api.settings)
    rows = api.rows(
        select(RealImage.object_key, RealImage.label).where(
            RealImage.dataset_id == uuid.UUID(dataset_id)
        )
    )
    rng = np.random.default_rng(0)
    for key, label in rows:
        pixels = rng.integers(150, 230, (16, 16, 3), dtype=np.uint8)
        pixels[5:11, 5:11] = 40 if label == "MEL" else 120
        store.put_bytes(key, encode_png(pixels), "image/png")


def _stored_steps(settings: Settings, generator_id: str) -> list[int]:
    prefix = checkpoint_prefix(uuid.UUID(generator_id))
    return sorted(
        int(key.split("/")[3].removeprefix("checkpoint-"))
        for key in make_store(settings).list_keys(prefix + "/")
        if key.endswith("/" + MANIFEST_FILE)
    )


def test_a_killed_worker_resumes_on_a_fresh_scratch_dir_from_storage(
    host_settings: dict[str, Settings], api: ApiHarness, tmp_path: Path
) -> None:
    started = time.monotonic()
    a, b = host_settings["a"], host_settings["b"]
    dataset_id = ready_dataset(api, {"MEL": 2, "NV": 2})
    _store_dataset_images(api, dataset_id)
    worker_a = _worker(a, tmp_path / "worker-a")
    worker_b: ManagedProcess | None = None
    engine = make_engine(a)
    try:
        created = api.client.post(
            "/v1/generators",
            json={
                "dataset_id": dataset_id,
                "training": TRAINING,
                "quality_probe": {"enabled": False},
            },
        )
        assert created.status_code == 202, created.text
        job_id, generator_id = created.json()["job_id"], created.json()["generator_id"]

        # Kill host A as soon as a mid-run checkpoint is in storage.
        wait_for(
            lambda: any(s >= 40 for s in _stored_steps(a, generator_id)),
            120,
            "a checkpoint of step 40 in storage",
            interval=0.05,
        )
        for pid in [worker_a.process.pid, *worker_a.children()]:
            os.kill(pid, signal.SIGKILL)
        worker_a.process.wait()
        stored_at_kill = _stored_steps(a, generator_id)
        last_stored = max(stored_at_kill)
        assert last_stored < TRAINING["max_train_steps"], "training ended before the kill"

        # Host B: a fresh data dir, holding only a leftover of a long-dead run.
        scratch_b = b.data_dir / "scratch" / "generators" / generator_id
        leftover = scratch_b / ".tmp-checkpoint-00000020-1"
        leftover.mkdir(parents=True)
        (leftover / "training_state.pt").write_bytes(b"half written")
        hour_ago = time.time() - 3600
        for path in (leftover / "training_state.pt", leftover):
            os.utime(path, (hour_ago, hour_ago))
        worker_b = _worker(b, tmp_path / "worker-b")

        # The reaper (the API runs it) re-sends the job once A's lease has run out.
        celery = create_celery_app(a)
        factory = make_session_factory(engine)
        seen_done: list[int] = []

        def resumed_and_final() -> bool:
            job = api.client.get(f"/v1/jobs/{job_id}").json()
            if job["attempts"] < 2:
                reap(celery, factory, lease_s=LEASE_S)
            else:
                seen_done.append(job["progress"]["done"])
            return job["state"] in ("succeeded", "failed", "canceled")

        wait_for(resumed_and_final, 120, "the job to resume and end", interval=0.1)
        job = api.client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", (job, worker_b.log()[-3000:])
        generator = api.client.get(f"/v1/generators/{generator_id}").json()
    finally:
        worker_a.stop()
        if worker_b is not None:
            worker_b.stop()
        engine.dispose()

    resumed = job["result"]["resumed_from_step"]
    total = TRAINING["max_train_steps"]
    assert job["attempts"] == 2 and job["result"]["steps"] == total
    assert resumed == last_stored > 0
    # B trained only the steps after the checkpoint: it said so, and its progress reports
    # (every 10 steps, after the 0 it starts with) never fell at or below the resumed step.
    assert f"resuming generator training from step {resumed}" in worker_b.log()
    reports_of_b = sorted(set(seen_done[seen_done.index(0) :]))
    assert reports_of_b[0] == 0 and reports_of_b[1] > resumed, reports_of_b
    assert [step for step, _ in generator["loss_curve"]] == list(range(1, total + 1))
    # Retention: storage and B's scratch hold the newest KEEP checkpoints; the leftover of
    # the dead run was swept when B's task started.
    assert _stored_steps(b, generator_id) == [total - 20, total]
    assert [c.step for c in list_checkpoints(scratch_b)] == [total - 20, total]
    assert not leftover.exists()
    print(  # noqa: T201
        f"\nresumed at step {resumed} of {total} on a fresh scratch dir (attempt "
        f"{job['attempts']}); steps reported by the new worker {reports_of_b[1:]}; storage "
        f"kept steps {_stored_steps(b, generator_id)}; {time.monotonic() - started:.0f} s"
    )

"""Service tier: uploads over HTTP, ingested by a real Celery worker process through
Redis, objects in an S3 server (moto on loopback), rows in Postgres."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.jobs import create_job, reap
from shared.models import Job, JobState, RealImage, Tenant
from shared.storage import make_store
from tests.conftest import ApiHarness
from tests.fixtures.archives import build, corrupt_png, manifest_files, samples, write_zip
from tests.fixtures.services import ManagedProcess, wait_for

pytestmark = pytest.mark.service


def _upload(api: ApiHarness, archive: Path, **form: str) -> dict[str, Any]:
    with archive.open("rb") as handle:
        response = api.client.post(
            "/v1/datasets",
            data={"name": archive.stem, **form},
            files={"file": (archive.name, handle, "application/octet-stream")},
        )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def _rows(api: ApiHarness, dataset_id: str) -> list[RealImage]:
    engine = make_engine(api.settings)
    with make_session_factory(engine)() as session:
        rows = list(
            session.scalars(select(RealImage).where(RealImage.dataset_id == uuid.UUID(dataset_id)))
        )
    engine.dispose()
    return rows


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return samples(total=48, image_size=24, seed=11)


@pytest.mark.parametrize(
    ("kind", "tar"),
    [("csv", False), ("isic2019", True), ("ham10000", False), ("imagefolder", True)],
)
def test_each_format_ends_ready_with_counts_and_splits(
    service_api: ApiHarness,
    demo,
    tmp_path: Path,
    kind: str,
    tar: bool,  # type: ignore[no-untyped-def]
) -> None:
    built = build(kind, tmp_path, demo, tar=tar)
    created = _upload(service_api, built.path)
    job = service_api.wait_job(created["job_id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert job["progress"]["percent"] == 100.0
    dataset = service_api.client.get(f"/v1/datasets/{created['dataset_id']}").json()
    assert dataset["state"] == "ready" and dataset["format"] == kind
    assert dataset["class_counts"] == built.expected_counts
    counts = built.expected_counts.values()
    assert dataset["imbalance_ratio"] == pytest.approx(max(counts) / min(counts))
    split_total = Counter()
    for per_class in dataset["split_counts"].values():
        split_total.update(per_class)
    assert dict(split_total) == built.expected_counts

    rows = _rows(service_api, created["dataset_id"])
    assert len(rows) == built.n_images
    if kind in ("csv", "isic2019", "ham10000"):  # grouped formats: a patient in one split only
        by_group: dict[str, set[str]] = {}
        for row in rows:
            by_group.setdefault(str(row.group_id), set()).add(row.split.value)
        assert all(len(s) == 1 for s in by_group.values())
    store = make_store(service_api.settings)
    assert sorted(r.object_key for r in rows) == store.list_keys(
        f"datasets/{created['dataset_id']}/images/"
    )
    if kind in ("csv", "isic2019"):
        assert all(r.mask_key and store.exists(r.mask_key) for r in rows)


def test_corrupt_images_are_reported_and_the_rest_ingested(
    service_api: ApiHarness, demo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    files = manifest_files(demo[:40])
    images = sorted(k for k in files if k.startswith("data/images/"))
    files[images[0]] = corrupt_png()
    files[images[1]] = b"this is not a png"
    files[images[2]] = files[images[3]]  # the same pixels twice: one is kept
    created = _upload(service_api, write_zip(tmp_path / "broken.zip", files))
    job = service_api.wait_job(created["job_id"], timeout=120)
    assert job["state"] == "succeeded", job
    dataset = service_api.client.get(f"/v1/datasets/{created['dataset_id']}").json()
    report = dataset["ingest_report"]
    assert report["images"] == 37 and report["rejected_count"] == 3
    assert report["rejected_by_reason"]["duplicate"] == 1
    by_file = {r["file"]: r["reason"] for r in report["rejected"]}
    assert by_file[images[0]] in ("truncated", "corrupt") and by_file[images[1]] == "corrupt"
    assert (images[2] in by_file) != (images[3] in by_file)
    assert all(r["line"] for r in report["rejected"])


def test_killed_worker_mid_ingest_loses_and_duplicates_nothing(
    service_api: ApiHarness, service_worker: ManagedProcess, tmp_path: Path
) -> None:
    demo = samples(total=400, image_size=48, seed=5)
    created = _upload(service_api, build("csv", tmp_path, demo).path)
    job_id = created["job_id"]

    def mid_ingest() -> bool:
        job = service_api.client.get(f"/v1/jobs/{job_id}").json()
        return job["stage"] == "decoding" and 30 <= job["progress"]["done"] < 300

    wait_for(mid_ingest, 120, "ingest to be under way", interval=0.05)
    children = service_worker.children()
    assert children, "the prefork worker has a child process running the task"
    for pid in children:
        os.kill(pid, signal.SIGKILL)  # the process running the task dies mid-chunk

    job = service_api.wait_job(job_id, timeout=180)
    assert job["state"] == "succeeded", job
    assert job["attempts"] >= 2, "the task was delivered again after the worker died"
    rows = _rows(service_api, created["dataset_id"])
    assert len(rows) == 400 == len({r.sha256 for r in rows})
    store = make_store(service_api.settings)
    assert len(store.list_keys(f"datasets/{created['dataset_id']}/images/")) == 400
    assert len(store.list_keys(f"datasets/{created['dataset_id']}/masks/")) == 400


def test_cancel_stops_a_running_ingest_and_keeps_its_rows(
    service_api: ApiHarness, tmp_path: Path
) -> None:
    demo = samples(total=600, image_size=48, seed=8)
    created = _upload(service_api, build("imagefolder", tmp_path, demo).path)
    job_id = created["job_id"]
    wait_for(
        lambda: service_api.client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 20,
        120,
        "ingest progress",
        interval=0.05,
    )
    assert service_api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = service_api.wait_job(job_id, timeout=120)
    assert job["state"] == "canceled"
    kept = _rows(service_api, created["dataset_id"])
    assert 0 < len(kept) < 600  # what finished before the cancel is kept
    dataset = service_api.client.get(f"/v1/datasets/{created['dataset_id']}").json()
    assert dataset["state"] == "failed" and dataset["ingest_report"]["error"] == "ingest canceled"


def test_reaper_sends_a_job_whose_dispatch_was_lost(service_api: ApiHarness) -> None:
    """A crash between commit and send leaves an unsent row; the reaper sends it."""
    settings = service_api.settings
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == service_api.tenant_name))
        assert tenant is not None
        job = create_job(
            session,
            tenant_id=tenant.id,
            kind="ingest",
            task_name="tailsynth.ingest_dataset",
            params={
                "dataset_id": str(uuid.uuid4()),
                "source": "demo",
                "total": 40,
                "image_size": 16,
                "seed": 0,
            },
        )
        job_id = job.id
    time.sleep(0.2)
    with factory() as session:
        assert session.get(Job, job_id).dispatched_at is None  # type: ignore[union-attr]
    sent = reap(create_celery_app(settings), factory, lease_s=settings.job_lease_s, grace_s=0.1)
    assert sent >= 1
    # The task runs and fails cleanly: its dataset row never existed.
    final = service_api.wait_job(str(job_id), timeout=120)
    assert final["state"] == "failed" and "vanished" in final["error"]
    with factory() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.state == JobState.QUEUED, Job.id == job_id)
            )
            == 0
        )
    engine.dispose()

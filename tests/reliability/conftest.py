"""Fixtures of the fault and abuse suite: live API servers, pairs of job workers, tenants.

Everything is real: ``tailsynth api`` (uvicorn) as its own process on Postgres, Redis
and the moto S3 server of the session (tests/conftest.py), and Celery worker processes.
Each fixture has its own Redis key prefix under the session's, so a server's queued
jobs reach only the workers meant to run them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.api.auth import hash_key
from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.imaging import encode_png
from shared.jobs import reap
from shared.models import (
    ApiKey,
    CuratedSet,
    Dataset,
    DatasetState,
    Experiment,
    Generator,
    Job,
    JobState,
    RealImage,
    Split,
    SynthesisRequest,
    SyntheticImage,
    Tenant,
    WebhookEndpoint,
)
from shared.settings import Settings
from shared.storage import make_store
from tests.conftest import issue_key
from tests.fixtures.services import (
    ManagedProcess,
    free_port,
    start_process,
    start_worker,
    wait_for,
)


@dataclass
class LiveApi:
    """``tailsynth -v api`` serving HTTP on loopback, with a tenant's key."""

    url: str
    settings: Settings
    process: ManagedProcess
    api_key: str
    factory: sessionmaker[Session]

    def client(self, api_key: str | None = None, **kwargs: Any) -> httpx.Client:
        key = api_key or self.api_key
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    def tenant_id(self, api_key: str | None = None) -> uuid.UUID:
        """The tenant of ``api_key`` (the fixture's own by default)."""
        with self.factory() as session:
            tenant_id = session.scalar(
                select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(api_key or self.api_key))
            )
        assert tenant_id is not None
        return tenant_id

    def new_key(self, tenant: str | None = None) -> str:
        """A key of a new tenant (or of ``tenant``)."""
        return issue_key(self.settings, tenant or f"rel-{uuid.uuid4().hex[:8]}")


def start_api(settings: Settings, log_dir: Path) -> tuple[ManagedProcess, str]:
    """``tailsynth -v api`` (INFO logs) on a free port, once it answers /v1/health."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def answers(_: ManagedProcess) -> bool:
        try:
            return httpx.get(f"{url}/v1/health", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    env = {**os.environ, **settings.environ(), "OMP_NUM_THREADS": "1"}
    process = start_process(
        [sys.executable, "-m", "services.cli", "-v", "api", "--port", str(port)],
        log_dir / "api.log",
        env,
        answers,
        timeout=120,
    )
    return process, url


def _live_api(settings: Settings, log_dir: Path) -> Iterator[LiveApi]:
    process, url = start_api(settings, log_dir)
    engine = make_engine(settings)
    try:
        key = issue_key(settings, f"rel-{uuid.uuid4().hex[:8]}")
        yield LiveApi(url, settings, process, key, make_session_factory(engine))
    finally:
        process.stop()
        engine.dispose()


@pytest.fixture(scope="session")
def queued_only_api(
    service_settings: Settings, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    """A live API whose queue no worker consumes: the jobs it accepts stay queued, so
    abuse tests (fuzzing, races, limits) cost no worker time. Its reaper runs every
    second (it purges expired idempotency records too)."""
    settings = service_settings.model_copy(
        update={"broker_key_prefix": f"{redis_prefix}queued-only:", "reaper_interval_s": 1.0}
    )
    yield from _live_api(settings, tmp_path_factory.mktemp("queued-only-api"))


@pytest.fixture(scope="session")
def working_api(
    service_settings: Settings,
    service_worker: ManagedProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveApi]:
    """A live API on the session's queues, which its real worker consumes."""
    yield from _live_api(service_settings, tmp_path_factory.mktemp("working-api"))


def add_owned_rows(api: LiveApi, tenant_id: uuid.UUID, marker: str) -> dict[str, uuid.UUID]:
    """One row of every kind a path names, owned by ``tenant_id``: path param -> id."""
    ids = {name: uuid.uuid4() for name in ("dataset", "image", "generator", "synthesis")}
    ids |= {name: uuid.uuid4() for name in ("curated", "synthetic", "job", "experiment")}
    ids["webhook"] = uuid.uuid4()
    store = make_store(api.settings)
    report_key = f"reports/{ids['experiment']}/report.html"
    store.put_bytes(report_key, f"<html>{marker}</html>".encode())
    image_key, image = (
        f"synthetic/{ids['synthetic']}.png",
        encode_png(np.zeros((16, 16, 3), np.uint8)),
    )
    store.put_bytes(image_key, image)
    rows = [
        Dataset(
            id=ids["dataset"],
            tenant_id=tenant_id,
            name=f"{marker}-dataset",
            format="csv",
            state=DatasetState.READY,
            class_names=["DF"],
            class_counts={"DF": 1},
            ingest_job_id=ids["job"],
        ),
        RealImage(
            id=ids["image"],
            dataset_id=ids["dataset"],
            source_path=f"{marker}/patient-0001.png",
            sha256="a" * 64,
            object_key=f"images/{marker}.png",
            label="DF",
            split=Split.TRAIN,
            width=16,
            height=16,
            channels=3,
        ),
        Generator(
            id=ids["generator"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            kind="trained",
            state="ready",
            config={"note": marker},
            checkpoint_sha256="0" * 64,
        ),
        SynthesisRequest(
            id=ids["synthesis"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            generator_id=ids["generator"],
            mode="inpaint",
            counts={"DF": 1},
            curated_set_id=ids["curated"],
        ),
        CuratedSet(
            id=ids["curated"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            synthesis_id=ids["synthesis"],
            state="ready",
            summary={"note": marker},
        ),
        SyntheticImage(
            id=ids["synthetic"],
            tenant_id=tenant_id,
            synthesis_id=ids["synthesis"],
            curated_set_id=ids["curated"],
            index_in_request=0,
            dataset_id=ids["dataset"],
            generator_id=ids["generator"],
            source_image_id=ids["image"],
            object_key=image_key,
            sha256=hashlib.sha256(image).hexdigest(),
            label="DF",
            mode="inpaint",
            scheduler="ddim",
            steps=10,
            guidance_scale=3.0,
            seed=1,
            checkpoint_sha256="0" * 64,
            job_id=ids["job"],
            decision="kept",
        ),
        Job(
            id=ids["job"],
            tenant_id=tenant_id,
            kind="ingest",
            task_name="tailsynth.ingest_dataset",
            queue="ingest",
            params={"dataset_id": str(ids["dataset"]), "note": marker},
            state=JobState.SUCCEEDED,
            stage="done",
        ),
        Experiment(
            id=ids["experiment"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            state="succeeded",
            config={"note": marker},
            report_key=report_key,
        ),
        WebhookEndpoint(
            id=ids["webhook"],
            tenant_id=tenant_id,
            url=f"https://{marker}.example.org/hook",
            events=["job.succeeded"],
            secret=f"whsec_{marker}",
        ),
    ]
    with api.factory.begin() as session:
        for row in rows:  # in order: each row's foreign keys exist before it
            session.add(row)
            session.flush()
    return {
        "dataset_id": ids["dataset"],
        "generator_id": ids["generator"],
        "curated_set_id": ids["curated"],
        "image_id": ids["synthetic"],
        "job_id": ids["job"],
        "experiment_id": ids["experiment"],
        "webhook_id": ids["webhook"],
    }


# ----------------------------------------------------------------- two job workers

#: Lease and attempt cap of :func:`worker_pair` (seconds, claims per stage).
PAIR_LEASE_S = 3
PAIR_MAX_ATTEMPTS = 3


@dataclass
class WorkerPair:
    """Two Celery worker processes of tests/fixtures/job_tasks.py on one queue."""

    settings: Settings
    factory: sessionmaker[Session]
    celery: Celery
    tenant_id: uuid.UUID
    workers: tuple[ManagedProcess, ManagedProcess]

    def add_job(self, task_name: str, log: Path, **params: Any) -> uuid.UUID:
        """A queued job of a test task on the ``ingest`` queue (nothing sent yet)."""
        with self.factory.begin() as session:
            job = Job(
                tenant_id=self.tenant_id,
                kind="test",
                task_name=task_name,
                queue="ingest",
                params={"log": str(log), **params},
                state=JobState.QUEUED,
                stage="queued",
            )
            session.add(job)
            session.flush()
            return job.id

    def job(self, job_id: uuid.UUID) -> Job:
        with self.factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def wait_final(self, job_id: uuid.UUID, timeout: float = 90, reap_s: float = 0) -> Job:
        """The job once final; with ``reap_s``, the API's reaper pass runs that often
        meanwhile (re-sending a job whose lease ran out, as a live API would)."""

        def final() -> bool:
            if reap_s:
                reap(self.celery, self.factory, lease_s=PAIR_LEASE_S)
            return self.job(job_id).state.is_final

        try:
            wait_for(final, timeout, f"job {job_id}", interval=reap_s or 0.1)
        except TimeoutError:
            logs = "\n".join(w.log()[-3000:] for w in self.workers)
            raise AssertionError(f"job {job_id} never ended:\n{logs}") from None
        return self.job(job_id)


@pytest.fixture(scope="module")
def worker_pair(
    service_settings: Settings, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPair]:
    """Two worker processes (one pool process each) consuming the ``ingest`` queue of
    their own broker prefix, with a short lease and the attempt cap of the settings."""
    settings = service_settings.model_copy(
        update={
            "broker_key_prefix": f"{redis_prefix}pair-{uuid.uuid4().hex[:6]}:",
            "job_lease_s": PAIR_LEASE_S,
            "job_max_attempts": PAIR_MAX_ATTEMPTS,
            "job_transient_tries": 2,
            "job_transient_backoff_s": 0.05,
            "job_transient_backoff_max_s": 0.2,
        }
    )
    env = {**os.environ, **settings.environ(), "OMP_NUM_THREADS": "1"}
    started: list[ManagedProcess] = []
    engine = make_engine(settings)
    try:
        for name in ("a", "b"):
            started.append(
                start_worker(
                    tmp_path_factory.mktemp(f"worker-{name}"),
                    env,
                    queues="ingest",
                    app="tests.fixtures.job_tasks",
                )
            )
        factory = make_session_factory(engine)
        with factory.begin() as session:
            tenant = Tenant(name=f"rel-jobs-{uuid.uuid4().hex[:8]}")
            session.add(tenant)
            session.flush()
            tenant_id = tenant.id
        yield WorkerPair(
            settings, factory, create_celery_app(settings), tenant_id, (started[0], started[1])
        )
    finally:
        for worker in started:
            worker.stop()
        engine.dispose()

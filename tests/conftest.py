"""Shared fixtures. Service-tier fixtures use real Postgres, Redis, an S3 server and a
real Celery worker process (see tests/fixtures/services.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.auth import create_api_key
from services.client import FINAL_STATES
from shared.db import make_engine, make_session_factory, session_scope
from shared.migrate import upgrade
from shared.settings import Settings
from tests.fixtures.services import (
    REDIS_URL,
    ManagedProcess,
    require,
    start_moto,
    start_worker,
    temporary_schema,
    wait_for,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class ApiHarness:
    """A TestClient on the real app, authenticated as a fresh tenant."""

    client: TestClient
    settings: Settings
    api_key: str
    tenant_name: str

    def wait_job(self, job_id: str, timeout: float = 300, interval: float = 0.2) -> dict[str, Any]:
        """Poll ``GET /v1/jobs/{id}`` until the job is final; return its last state."""
        state: dict[str, Any] = {}

        def final() -> bool:
            state.update(self.client.get(f"/v1/jobs/{job_id}").json())
            return state["state"] in FINAL_STATES

        wait_for(final, timeout, f"job {job_id}", interval=interval)
        return state

    def rows(self, query: Any) -> list[Any]:
        """The result rows of a SQLAlchemy ``query`` on this harness's database."""
        engine = make_engine(self.settings)
        try:
            with make_session_factory(engine)() as session:
                return list(session.execute(query).all())
        finally:
            engine.dispose()

    def upload_zip(self, archive: Path, name: str, **form: str) -> str:
        """Upload a dataset archive, wait for its ingest to succeed; its dataset id."""
        with archive.open("rb") as handle:
            created = self.client.post(
                "/v1/datasets",
                data={"name": name, **form},
                files={"file": (archive.name, handle, "application/zip")},
            ).json()
        job = self.wait_job(created["job_id"], timeout=600)
        assert job["state"] == "succeeded", job
        return str(created["dataset_id"])

    def new_tenant_headers(self) -> dict[str, str]:
        key = issue_key(self.settings, tenant=f"other-{uuid.uuid4().hex[:8]}")
        return {"Authorization": f"Bearer {key}"}


def issue_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return create_api_key(session, name="test", tenant_name=tenant).key
    finally:
        engine.dispose()


def _harness(settings: Settings) -> Iterator[ApiHarness]:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    key = issue_key(settings, tenant)
    with TestClient(create_app(settings, run_reaper=False)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield ApiHarness(client, settings, key, tenant)


# ----------------------------------------------------------------- embedded (no servers)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Embedded settings in a temporary directory: SQLite, filesystem broker, local store."""
    settings = Settings(environment="test", data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def local_api(local_settings: Settings) -> Iterator[ApiHarness]:
    yield from _harness(local_settings)


# ----------------------------------------------------------------- real services


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A fresh Postgres schema for this test session (migrated by ``service_settings``)."""
    with temporary_schema("ts_test_") as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    require("Redis", lambda: client.ping())
    prefix = f"ts-test-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    moto, port = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def service_settings(
    pg_schema_url: str,
    redis_prefix: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    settings = Settings(
        environment="test",
        data_dir=tmp_path_factory.mktemp("service-data"),
        database_url=pg_schema_url,
        broker_url=REDIS_URL,
        broker_key_prefix=redis_prefix,
        storage_backend="s3",
        s3_endpoint=s3_endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_bucket=f"ts-{uuid.uuid4().hex[:12]}",
        s3_region="us-east-1",
        ingest_chunk_size=10,
        weights_roots=(tmp_path_factory.mktemp("weights-root"),),
    )
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture(scope="session")
def service_worker(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """One real Celery worker process consuming every queue from Redis."""
    env = {**os.environ, **service_settings.environ(), "OMP_NUM_THREADS": "1"}
    worker = start_worker(tmp_path_factory.mktemp("worker"), env)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def service_api(service_settings: Settings, service_worker: ManagedProcess) -> Iterator[ApiHarness]:
    yield from _harness(service_settings)

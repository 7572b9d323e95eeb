"""(8) Postgres or S3 unreachable: the API answers 503 problem+json with ``Retry-After``,
workers back off, and nothing is lost when the backend returns.

The API (the real app, in-process) and a real worker process each reach Postgres and the
S3 server through a loopback proxy of their own (tests/fixtures/faults.py): taking a
proxy down cuts that client off ("connection refused") while the server, and what it
holds, stays up for everyone else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from services.api.app import create_app
from shared.models import Job, RealImage
from shared.settings import Settings
from tests.conftest import ApiHarness, issue_key
from tests.fixtures.archives import manifest_files, pick_samples, write_zip
from tests.fixtures.faults import TcpProxy, object_keys, proxied, worker_env
from tests.fixtures.rows import tenant_id
from tests.fixtures.services import ManagedProcess, start_worker, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.service]

PROBLEM_JSON = "application/problem+json"


@dataclass
class Outage:
    """The API and a worker, each behind its own Postgres and S3 proxies."""

    api: ApiHarness
    worker: ManagedProcess
    api_pg: TcpProxy
    api_s3: TcpProxy
    worker_pg: TcpProxy
    worker_s3: TcpProxy


def _through(settings: Settings, pg: TcpProxy, s3: TcpProxy) -> Settings:
    url = make_url(settings.resolved_database_url).set(host="127.0.0.1", port=pg.port)
    return settings.model_copy(
        update={
            "database_url": SecretStr(url.render_as_string(hide_password=False)),
            "s3_endpoint": s3.address,
        }
    )


@pytest.fixture
def outage(service_settings: Settings, redis_prefix: str, tmp_path: Path) -> Iterator[Outage]:
    database = make_url(service_settings.resolved_database_url)
    s3_host, _, s3_port = service_settings.s3_endpoint.partition(":")
    settings = service_settings.model_copy(
        update={"broker_key_prefix": f"{redis_prefix}outage-{uuid.uuid4().hex[:6]}:"}
    )
    with ExitStack() as stack:
        api_pg, worker_pg = (
            stack.enter_context(proxied(database.host or "127.0.0.1", database.port or 5432))
            for _ in range(2)
        )
        api_s3, worker_s3 = (stack.enter_context(proxied(s3_host, int(s3_port))) for _ in range(2))
        worker_settings = _through(settings, worker_pg, worker_s3).model_copy(
            update={
                "job_transient_tries": 8,
                "job_transient_backoff_s": 0.5,
                "job_transient_backoff_max_s": 4.0,
            }
        )
        worker = start_worker(tmp_path, worker_env(worker_settings), queues="ingest")
        stack.callback(worker.stop)
        # Short timeouts, so the hung-server cases take seconds here.
        api_settings = _through(settings, api_pg, api_s3).model_copy(
            update={
                "s3_connect_timeout_s": 1.0,
                "s3_read_timeout_s": 2.0,
                "s3_tries": 2,
                "database_connect_timeout_s": 2,
            }
        )
        tenant = f"outage-{uuid.uuid4().hex[:8]}"
        key = issue_key(api_settings, tenant)
        client = stack.enter_context(TestClient(create_app(api_settings, run_reaper=False)))
        client.headers["Authorization"] = f"Bearer {key}"
        api = ApiHarness(client, api_settings, key, tenant)
        yield Outage(api, worker, api_pg, api_s3, worker_pg, worker_s3)


def _unavailable(response) -> int:  # type: ignore[no-untyped-def]
    """Asserts a 503 problem+json with a Retry-After; the seconds it asks to wait."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == 503 and "unreachable" in body["detail"]
    assert "Traceback" not in response.text and "127.0.0.1" not in response.text
    return int(response.headers["Retry-After"])


def _upload(api: ApiHarness, archive: Path, key: str):  # type: ignore[no-untyped-def]
    with archive.open("rb") as handle:
        return api.client.post(
            "/v1/datasets",
            data={"name": key},
            files={"file": (archive.name, handle, "application/zip")},
            headers={"Idempotency-Key": key},
        )


def _stored(api: ApiHarness, dataset_id: str) -> tuple[int, int]:
    """The dataset's image rows, and how many of their objects exist."""
    keys = {
        key
        for (key,) in api.rows(
            select(RealImage.object_key).where(RealImage.dataset_id == uuid.UUID(dataset_id))
        )
    }
    stored = set(object_keys(api.settings, f"datasets/{dataset_id}/images/"))
    return len(keys), len(keys & stored)


def _retries(worker: ManagedProcess, job_id: str) -> int:
    return worker.log().count(f"job {job_id}: transient")


def test_an_unreachable_backend_answers_503_and_loses_nothing(
    outage: Outage, tmp_path: Path
) -> None:
    api = outage.api
    picked = pick_samples({"NV": 10, "MEL": 10}, total=200, seed=3)
    archive = write_zip(
        tmp_path / "set.zip", manifest_files([s for group in picked.values() for s in group])
    )
    images = 20

    # The API's Postgres goes away: reads and writes answer 503, then work again.
    outage.api_pg.down()
    waits = {_unavailable(api.client.get("/v1/jobs"))}
    waits.add(_unavailable(api.client.post("/v1/synthesis", json={"counts": {"MEL": 1}})))
    # It stops answering (takes connections, never answers): still 503, in seconds.
    outage.api_pg.hang()
    started = time.monotonic()
    waits.add(_unavailable(api.client.get("/v1/jobs")))
    pg_hung_s = time.monotonic() - started
    outage.api_pg.up()
    assert api.client.get("/v1/jobs").status_code == 200

    # The API's S3 goes away: the upload answers 503 and leaves no job behind.
    outage.api_s3.down()
    started = time.monotonic()
    waits.add(_unavailable(_upload(api, archive, "upload-1")))
    s3_refused_s = time.monotonic() - started
    # The API's S3 stops answering (takes connections, never answers): the upload still
    # answers 503 within the storage timeouts instead of hanging.
    outage.api_s3.hang()
    started = time.monotonic()
    waits.add(_unavailable(_upload(api, archive, "upload-1")))
    s3_hung_s = time.monotonic() - started
    outage.api_s3.up()
    jobs = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id(api))
    assert api.rows(jobs)[0][0] == 0

    # The worker's S3 goes away: the client's retry of that upload is accepted, and the
    # ingest backs off inside its task until S3 returns.
    outage.worker_s3.down()
    accepted = _upload(api, archive, "upload-1")
    assert accepted.status_code == 202, accepted.text
    s3_job, s3_dataset = accepted.json()["job_id"], accepted.json()["dataset_id"]
    wait_for(lambda: _retries(outage.worker, s3_job) >= 1, 90, "the ingest to back off")
    outage.worker_s3.up()
    s3_done = api.wait_job(s3_job, timeout=120)

    # The worker's Postgres goes away: its claim backs off until Postgres returns.
    outage.worker_pg.down()
    accepted = _upload(api, archive, "upload-2")
    assert accepted.status_code == 202, accepted.text
    pg_job, pg_dataset = accepted.json()["job_id"], accepted.json()["dataset_id"]
    wait_for(lambda: _retries(outage.worker, pg_job) >= 2, 60, "the claim to back off")
    outage.worker_pg.up()
    pg_done = api.wait_job(pg_job, timeout=120)

    s3_stored, pg_stored = _stored(api, s3_dataset), _stored(api, pg_dataset)
    print(  # noqa: T201 (the figure this test proves)
        f"\n(8) API with Postgres down: 2 of 2 requests 503 problem+json, hung: 503 after "
        f"{pg_hung_s:.1f}s; with S3 down: the "
        f"upload 503 after {s3_refused_s:.1f}s refused, {s3_hung_s:.1f}s hung, no job made; "
        f"Retry-After {sorted(waits)} s. "
        f"Worker with S3 down: {_retries(outage.worker, s3_job)} backed-off retries, ingest "
        f"{s3_done['state']} on attempt {s3_done['attempts']}; with Postgres down: "
        f"{_retries(outage.worker, pg_job)} backed-off claim retries, ingest "
        f"{pg_done['state']} on attempt {pg_done['attempts']}; images stored "
        f"{s3_stored[1]}/{s3_stored[0]} and {pg_stored[1]}/{pg_stored[0]} of {images}"
    )
    assert waits and all(wait > 0 for wait in waits)
    assert s3_hung_s < 20  # 2 tries x (1 s connect + 2 s read), with room
    assert pg_hung_s < 20  # a 2 s connect timeout, with room
    assert (s3_done["state"], s3_done["attempts"]) == ("succeeded", 1), s3_done
    assert (pg_done["state"], pg_done["attempts"]) == ("succeeded", 1), pg_done
    assert s3_stored == (images, images) and pg_stored == (images, images)

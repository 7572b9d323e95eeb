"""The gateway's contract on the embedded deployment (SQLite, filesystem broker, no
worker running): auth, tenants, idempotency, problem+json, upload checks, jobs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.api.app import create_app
from services.api.workers import WorkerCensus
from shared.db import make_engine, make_session_factory
from shared.models import Dataset, Job, utcnow
from shared.storage import LocalObjectStore
from tests.conftest import ApiHarness, issue_key
from tests.fixtures.archives import build, samples, write_zip

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return samples(total=40, image_size=16)


def _upload(api: ApiHarness, archive: Path, key: str | None = None, **form: str):  # type: ignore[no-untyped-def]
    headers = {"Idempotency-Key": key} if key else {}
    with archive.open("rb") as handle:
        return api.client.post(
            "/v1/datasets",
            data={"name": "derm", **form},
            files={"file": (archive.name, handle, "application/zip")},
            headers=headers,
        )


def _count(api: ApiHarness, model: type) -> int:
    engine = make_engine(api.settings)
    with make_session_factory(engine)() as session:
        n = session.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return n


def _uploaded_objects(api: ApiHarness) -> list[str]:
    return LocalObjectStore(api.settings.resolved_storage_dir).list_keys("uploads/")


def test_health_needs_no_auth_and_reports_components(local_api: ApiHarness) -> None:
    response = TestClient(local_api.client.app).get("/v1/health")
    assert response.status_code == 200
    assert {k: v["status"] for k, v in response.json()["components"].items()} == {
        "db": "up",
        "broker": "up",
        "storage": "up",
    }


def test_health_is_degraded_naming_each_queue_without_a_live_worker(
    local_api: ApiHarness,
) -> None:
    """No worker runs here: the API still serves (200), but is not ``up``; each queue says
    it has no worker and how long its oldest job has waited."""
    job_id = local_api.client.post("/v1/datasets/demo", json={"total": 40}).json()["job_id"]
    engine = make_engine(local_api.settings)
    with make_session_factory(engine).begin() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.created_at = utcnow() - timedelta(minutes=5)
    engine.dispose()

    response = TestClient(local_api.client.app).get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["detail"] == "no live worker on queue ingest, generate, filter, train"
    assert {name: queue["workers"] for name, queue in body["queues"].items()} == {
        "ingest": 0,
        "generate": 0,
        "filter": 0,
        "train": 0,
    }
    assert body["queues"]["ingest"]["status"] == "down"
    assert 299 <= body["queues"]["ingest"]["oldest_waiting_s"] < 400
    assert body["queues"]["generate"]["oldest_waiting_s"] is None


def test_health_asks_the_workers_at_most_once_per_cache_period() -> None:
    """Each health call would otherwise broadcast to every worker and wait for replies."""
    asked: list[float] = []
    now = [100.0]

    class Inspect:
        def active_queues(self) -> dict[str, list[dict[str, str]]]:
            asked.append(now[0])
            return {
                "gen@gpu": [{"name": "generate"}],
                "all@cpu": [{"name": "generate"}, {"name": "train"}],
            }

    class Control:
        def inspect(self, timeout: float) -> Inspect:
            assert timeout == 0.5
            return Inspect()

    celery = SimpleNamespace(control=Control())
    census = WorkerCensus(celery, timeout_s=0.5, cache_s=10, clock=lambda: now[0])  # type: ignore[arg-type]
    first = census.by_queue()
    assert first == {
        "ingest": [], "generate": ["all@cpu", "gen@gpu"], "filter": [], "train": ["all@cpu"]
    }  # fmt: skip
    now[0] += 9.9
    assert census.by_queue() == first and asked == [100.0]
    now[0] += 0.1
    census.by_queue()
    assert asked == [100.0, 110.0]


def test_health_never_shows_the_exception_of_a_down_component(
    local_api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "/srv/hidden/objects: s3://tailsynth:hunter2@minio:9000"

    def fail() -> None:
        raise OSError(secret)

    monkeypatch.setattr(local_api.client.app.state.tailsynth.store, "ping", fail)  # type: ignore[attr-defined]
    response = TestClient(local_api.client.app).get("/v1/health")
    assert response.status_code == 503 and response.json()["status"] == "degraded"
    assert response.json()["components"]["storage"] == {"status": "down", "detail": "unreachable"}
    assert "hunter2" not in response.text and "OSError" not in response.text


def test_requests_without_a_valid_key_are_401_problems(local_api: ApiHarness) -> None:
    anonymous = TestClient(local_api.client.app)
    for headers in ({}, {"Authorization": "Bearer ts_nope_nope"}):
        response = anonymous.get("/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 401


def test_upload_is_accepted_and_queued(local_api: ApiHarness, demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = build("csv", tmp_path, demo).path
    response = _upload(local_api, archive)
    assert response.status_code == 202, response.text
    body = response.json()
    job = local_api.client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["state"] == "queued" and job["kind"] == "ingest"
    assert job["progress"] == {"done": 0, "total": 40, "percent": 0.0, "stage_percent": 0.0}
    dataset = local_api.client.get(f"/v1/datasets/{body['dataset_id']}").json()
    assert dataset["state"] == "ingesting" and dataset["format"] == "csv"


def test_idempotency_key_replays_the_same_answer_and_one_job(
    local_api: ApiHarness, demo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    archive = build("imagefolder", tmp_path, demo).path
    first = _upload(local_api, archive, key="k-1")
    second = _upload(local_api, archive, key="k-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert _count(local_api, Job) == 1 and _count(local_api, Dataset) == 1
    assert len(_uploaded_objects(local_api)) == 1
    different = _upload(local_api, archive, key="k-1", name="other-name")
    assert different.status_code == 422 and "different request body" in different.json()["detail"]
    assert _count(local_api, Job) == 1


def test_demo_request_is_idempotent_too(local_api: ApiHarness) -> None:
    body = {"total": 40, "image_size": 16}
    a = local_api.client.post("/v1/datasets/demo", json=body, headers={"Idempotency-Key": "d"})
    b = local_api.client.post("/v1/datasets/demo", json=body, headers={"Idempotency-Key": "d"})
    assert a.status_code == 202 and a.json()["job_id"] == b.json()["job_id"]
    bad = local_api.client.post("/v1/datasets/demo", json={"total": 3})
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["errors"][0]["field"] == "total"


def test_bad_archives_are_refused_and_nothing_is_stored(
    local_api: ApiHarness, tmp_path: Path
) -> None:
    cases = {
        "escape": ({"../../etc/x.png": b"x", "manifest.csv": b"path,label\n"}, "climbs out"),
        "missing": (
            {"manifest.csv": b"path,label\nnope.png,NV\na.png,DF\n", "a.png": b"x"},
            "line 2",
        ),
        "flat": ({"a.png": b"x"}, "could not detect"),
    }
    for name, (files, message) in cases.items():
        response = _upload(local_api, write_zip(tmp_path / f"{name}.zip", files))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        assert message in response.json()["detail"]
    not_archive = tmp_path / "x.zip"
    not_archive.write_bytes(b"plain text")
    assert _upload(local_api, not_archive).status_code == 422
    assert (
        _upload(
            local_api,
            write_zip(tmp_path / "f.zip", {"a/a.png": b"x", "b/b.png": b"y"}),
            format="dicom",
        )
        .json()["detail"]
        .startswith("unknown format")
    )
    assert _count(local_api, Job) == 0 and _count(local_api, Dataset) == 0
    assert _uploaded_objects(local_api) == []


def test_unknown_class_is_refused_with_its_line(
    local_api: ApiHarness, demo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    archive = build("csv", tmp_path, demo).path
    response = _upload(local_api, archive, classes="NV,MEL")
    assert response.status_code == 422
    assert "unknown class" in response.json()["detail"] and "line " in response.json()["detail"]


def test_oversized_upload_is_413(local_settings, demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = local_settings.model_copy(update={"max_upload_bytes": 2000})
    key = issue_key(small, "tiny")
    archive = build("csv", tmp_path, demo).path
    with TestClient(create_app(small, run_reaper=False)) as client, archive.open("rb") as handle:
        response = client.post(
            "/v1/datasets",
            data={"name": "big"},
            files={"file": ("d.zip", handle, "application/zip")},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM


def test_other_tenants_ids_answer_404(local_api: ApiHarness, demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    created = _upload(local_api, build("csv", tmp_path, demo).path).json()
    other = local_api.new_tenant_headers()
    for path in (f"/v1/datasets/{created['dataset_id']}", f"/v1/jobs/{created['job_id']}"):
        assert local_api.client.get(path).status_code == 200
        response = local_api.client.get(path, headers=other)
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    assert (
        local_api.client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=other).status_code
        == 404
    )
    assert local_api.client.get("/v1/jobs", headers=other).json()["total"] == 0
    assert local_api.client.get("/v1/jobs/not-a-uuid").status_code == 422
    assert local_api.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_jobs_list_filters_paginates_and_cancels(local_api: ApiHarness) -> None:
    ids = [
        local_api.client.post("/v1/datasets/demo", json={"total": 40, "seed": i}).json()["job_id"]
        for i in range(3)
    ]
    page = local_api.client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = local_api.client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)

    canceled = local_api.client.post(f"/v1/jobs/{ids[0]}/cancel")
    assert canceled.status_code == 202 and canceled.json()["state"] == "canceled"
    assert local_api.client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 409
    only = local_api.client.get("/v1/jobs", params={"state": "canceled"}).json()
    assert [j["id"] for j in only["items"]] == [ids[0]]
    assert local_api.client.get("/v1/jobs", params={"kind": "ingest"}).json()["total"] == 3
    bad = local_api.client.get("/v1/jobs", params={"state": "done"})
    assert bad.status_code == 422 and bad.json()["field"] == "state"


def test_openapi_documents_the_v1_surface(local_api: ApiHarness) -> None:
    paths = local_api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/health",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}/cancel",
    ):
        assert path in paths


def test_pretrained_sources_outside_the_weights_roots_are_422_saying_nothing_found(
    local_api: ApiHarness, tmp_path: Path
) -> None:
    """Refused by the request's text before any job exists: the same answer for a
    directory that exists and one that does not, and nothing is queued."""
    (tmp_path / "exists").mkdir()
    dataset_id = "00000000-0000-0000-0000-000000000001"
    details = []
    for source in (str(tmp_path / "exists"), str(tmp_path / "missing"), "/etc/../etc",
                   "../../weights", "a/b/c"):
        response = local_api.client.post(
            "/v1/generators",
            json={"kind": "pretrained", "dataset_id": dataset_id, "source": source},
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "source"
        details.append(response.json()["detail"].replace(source, "<source>"))
    assert len(set(details)) == 1 and "weights roots (none configured)" in details[0]
    assert _count(local_api, Job) == 0

"""(7) 20 concurrent POSTs with one ``Idempotency-Key`` against a live server: one job.

The API's contract (services/api/idempotency.py): the same key and body get the same
answer and one job; a request racing the first waits for it and replays its answer.
Records expire after ``idempotency_ttl_s`` (24 h by default): an expired key is free
again, and the server's reaper purges expired records.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from services.api.idempotency import purge_expired
from shared.db import make_engine, make_session_factory
from shared.models import Dataset, IdempotencyRecord, Job, utcnow
from shared.storage import make_store
from tests.conftest import ApiHarness
from tests.fixtures.archives import build, samples
from tests.fixtures.services import wait_for
from tests.reliability.conftest import LiveApi

pytestmark = [pytest.mark.reliability, pytest.mark.service]

CONCURRENT = 20
DEMO = {"name": "race", "total": 40, "image_size": 16}


def _own_tenant(api: LiveApi) -> LiveApi:
    """The same server with a key of a new tenant: counts of rows are one test's alone."""
    return replace(api, api_key=api.new_key())


def _race(send: Callable[[httpx.Client], httpx.Response], api: LiveApi) -> list[httpx.Response]:
    """``send`` from CONCURRENT threads (a client each) released at once; the answers."""
    barrier = threading.Barrier(CONCURRENT)
    answers: list[httpx.Response | BaseException | None] = [None] * CONCURRENT

    def one(i: int) -> None:
        with api.client(timeout=120) as client:
            try:
                barrier.wait(timeout=60)
            except threading.BrokenBarrierError as exc:
                answers[i] = exc
                return
            try:
                answers[i] = send(client)
            except BaseException as exc:  # reported below, with the others
                answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    failed = [a for a in answers if not isinstance(a, httpx.Response)]
    assert not failed, failed
    return [a for a in answers if isinstance(a, httpx.Response)]


def _count(api: LiveApi, model: type[Job] | type[Dataset]) -> int:
    with api.factory() as session:
        return (
            session.scalar(
                select(func.count()).select_from(model).where(model.tenant_id == api.tenant_id())
            )
            or 0
        )


def _check_one_answer(
    api: LiveApi, answers: list[httpx.Response], what: str, earlier_jobs: int = 0
) -> None:
    statuses = sorted(a.status_code for a in answers)
    replayed = {a.text for a in answers if a.status_code == 202}
    jobs = _count(api, Job) - earlier_jobs
    print(  # noqa: T201
        f"\n(7) {what}: {CONCURRENT} concurrent POSTs, one Idempotency-Key: statuses "
        f"{dict((s, statuses.count(s)) for s in set(statuses))}, {len(replayed)} distinct "
        f"answer(s), {jobs} job(s) created"
    )
    assert statuses == [202] * CONCURRENT, [a.text for a in answers if a.status_code != 202]
    assert len(replayed) == 1 and jobs == 1


def test_twenty_concurrent_demo_posts_with_one_key_make_one_job(
    queued_only_api: LiveApi,
) -> None:
    api = _own_tenant(queued_only_api)
    key = uuid.uuid4().hex
    answers = _race(
        lambda c: c.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key}), api
    )
    _check_one_answer(api, answers, "POST /v1/datasets/demo")
    assert _count(api, Dataset) == 1


def test_twenty_concurrent_uploads_with_one_key_make_one_job_and_store_one_archive(
    queued_only_api: LiveApi, tmp_path: Path
) -> None:
    api = _own_tenant(queued_only_api)
    archive = build("csv", tmp_path, samples(total=40, image_size=16)).path.read_bytes()
    store = make_store(api.settings)
    before = set(store.list_keys("uploads/"))
    key = uuid.uuid4().hex
    answers = _race(
        lambda c: c.post(
            "/v1/datasets",
            data={"name": "race"},
            files={"file": ("set.zip", archive, "application/zip")},
            headers={"Idempotency-Key": key},
        ),
        api,
    )
    _check_one_answer(api, answers, "POST /v1/datasets (upload)")
    # The losers' archives were deleted: one stored, the answered dataset's.
    stored = set(store.list_keys("uploads/")) - before
    dataset_id = answers[0].json()["dataset_id"]
    print(f"    archives stored: {len(stored)}")  # noqa: T201
    assert len(stored) == 1 and dataset_id in stored.pop()


def test_an_expired_key_is_free_again_and_purged(queued_only_api: LiveApi) -> None:
    api = _own_tenant(queued_only_api)
    key = uuid.uuid4().hex
    with api.client() as client:
        first = client.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key})
        assert first.status_code == 202
        # Within the TTL the same key with another body is a client bug: 422.
        other = {**DEMO, "name": "other"}
        reused = client.post("/v1/datasets/demo", json=other, headers={"Idempotency-Key": key})
        assert reused.status_code == 422 and "Idempotency-Key" in reused.text
        _age_records(api, key, api.settings.idempotency_ttl_s + 60)
        # Expired: the key is free again, even with another body; a new job is made.
        again = client.post("/v1/datasets/demo", json=other, headers={"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["job_id"] != first.json()["job_id"]
    assert _count(api, Job) == 2
    # The server's reaper (every second here) purges records past the TTL.
    _age_records(api, key, api.settings.idempotency_ttl_s + 60)
    wait_for(lambda: _records(api, key) == 0, 15, "the expired record to be purged")
    print(  # noqa: T201
        f"\n(7b) idempotency TTL {api.settings.idempotency_ttl_s:.0f} s: an expired key made a "
        "new job, and the reaper purged its record"
    )


def test_twenty_concurrent_posts_with_one_expired_key_make_one_new_job(
    queued_only_api: LiveApi,
) -> None:
    api = _own_tenant(queued_only_api)
    key = uuid.uuid4().hex
    with api.client() as client:
        first = client.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    _age_records(api, key, api.settings.idempotency_ttl_s + 60)
    answers = _race(
        lambda c: c.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key}), api
    )
    _check_one_answer(api, answers, "POST /v1/datasets/demo, key expired", earlier_jobs=1)
    assert answers[0].json()["job_id"] != first.json()["job_id"]


def _age_records(api: LiveApi, key: str, seconds: float) -> None:
    with api.factory.begin() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def _records(api: LiveApi, key: str) -> int:
    with api.factory() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(IdempotencyRecord)
                .where(IdempotencyRecord.key == key)
            )
            or 0
        )


def test_expiry_and_purge_on_the_embedded_deployment(local_api: ApiHarness) -> None:
    """The same on SQLite (the default deployment), whose timestamps come back naive."""
    key = uuid.uuid4().hex
    first = local_api.client.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key})
    again = local_api.client.post("/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202 and first.text == again.text
    ttl_s = local_api.settings.idempotency_ttl_s
    engine = make_engine(local_api.settings)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            assert purge_expired(session, ttl_s) == 0  # not expired yet: kept
            session.execute(
                update(IdempotencyRecord).values(created_at=utcnow() - timedelta(seconds=ttl_s + 1))
            )
        later = local_api.client.post(
            "/v1/datasets/demo", json=DEMO, headers={"Idempotency-Key": key}
        )
        assert later.status_code == 202 and later.json()["job_id"] != first.json()["job_id"]
        with factory.begin() as session:
            session.execute(
                update(IdempotencyRecord).values(created_at=utcnow() - timedelta(seconds=ttl_s + 1))
            )
            assert purge_expired(session, ttl_s) == 1
    finally:
        engine.dispose()

"""Webhooks against the real stack: Postgres, Redis, a real worker process for the
``ingest`` and ``webhooks`` queues, and a receiver on loopback (allowed explicitly)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from services.client import verify_webhook
from services.webhooks.delivery import sweep
from shared.jobs import dispatch
from shared.models import Job, JobState, Tenant, WebhookDelivery, utcnow
from tests.conftest import ApiHarness
from tests.fixtures.services import wait_for
from tests.webhooks.conftest import PROGRESS_INTERVAL_S, RETRY_SCHEDULE_S
from tests.webhooks.receiver import Receiver
from tests.webhooks.worker_app import REPORT_PROGRESS


def _start_job(api: ApiHarness, steps: int, step_s: float, fail: str | None = None) -> str:
    """A queued test job of this tenant (tests.webhooks.worker_app), sent to the worker;
    it fails with ``fail`` as its error if given."""
    state = api.client.app.state.tailsynth  # type: ignore[attr-defined]
    with state.sessions.begin() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == api.tenant_name))
        job = Job(
            tenant_id=tenant_id,
            kind="test",
            task_name=REPORT_PROGRESS,
            queue="ingest",
            params={"steps": steps, "step_s": step_s, "fail": fail},
            total=steps,
            state=JobState.QUEUED,
            stage="queued",
        )
        session.add(job)
        session.flush()
        job_id = job.id
    dispatch(state.celery, state.sessions, job_id)
    return str(job_id)


def _endpoint(api: ApiHarness, url: str, events: list[str]) -> dict[str, Any]:
    created = api.client.post("/v1/webhooks", json={"url": url, "events": events})
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


def _attempts(api: ApiHarness, webhook_id: str) -> list[dict[str, Any]]:
    page = api.client.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": 500})
    assert page.status_code == 200, page.text
    return sorted(page.json()["items"], key=lambda item: (item["created_at"], item["attempt"]))


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def test_a_job_with_a_webhook_gets_started_to_succeeded_signed_once_each(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/ok/{token}"
    created = webhook_api.client.post(
        "/v1/datasets/demo",
        json={
            "name": "hooked",
            "total": 40,
            "image_size": 16,
            "webhook": {"url": receiver.base + path},
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    hook, job_id = body["webhook"], body["job_id"]
    assert hook["secret"].startswith("whsec_") and hook["job_id"] == job_id
    assert webhook_api.wait_job(job_id, timeout=120)["state"] == "succeeded"

    def succeeded_arrived() -> bool:
        return any(r.event["type"] == "job.succeeded" for r in receiver.at(path))

    wait_for(succeeded_arrived, 30, "job.succeeded at the receiver")
    received = receiver.at(path)
    events = [verify_webhook(r.headers, r.body, hook["secret"]) for r in received]
    assert [r.headers["webhook-id"] for r in received] == [e["id"] for e in events]
    assert len({e["id"] for e in events}) == len(events)  # each event exactly once
    ordered = sorted(events, key=_when)
    assert ordered[0]["type"] == "job.started" and ordered[-1]["type"] == "job.succeeded"
    assert {e["type"] for e in events} <= {"job.started", "job.progress", "job.succeeded"}
    assert [e["type"] for e in events].count("job.succeeded") == 1
    assert all(e["data"]["id"] == job_id for e in events)
    # The job's JSON is what GET /v1/jobs/{id} answers.
    assert ordered[-1]["data"] == webhook_api.client.get(f"/v1/jobs/{job_id}").json()

    attempts = _attempts(webhook_api, hook["id"])
    assert len(attempts) == len(received)
    assert all(
        a["attempt"] == 1 and a["status_code"] == 200 and a["error"] is None
        and a["next_retry_at"] is None and a["delivery_state"] == "succeeded"
        for a in attempts
    )  # fmt: skip
    listed = webhook_api.client.get("/v1/webhooks").json()["items"]
    assert [(w["id"], w["job_id"]) for w in listed] == [(hook["id"], job_id)]
    assert "secret" not in listed[0]


def test_a_receiver_failing_twice_gets_the_event_on_attempt_3(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/flaky/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.succeeded"])
    job_id = _start_job(webhook_api, steps=2, step_s=0.01)

    def third_recorded() -> bool:
        return any(a["attempt"] == 3 for a in _attempts(webhook_api, hook["id"]))

    wait_for(third_recorded, 30, "the third attempt", interval=0.2)
    attempts = _attempts(webhook_api, hook["id"])
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    assert all(a["next_retry_at"] is not None and "500" in a["error"] for a in attempts[:2])
    assert attempts[2]["error"] is None and attempts[2]["next_retry_at"] is None
    assert {a["delivery_state"] for a in attempts} == {"succeeded"}
    received = receiver.at(path)
    assert len(received) == 3
    # One event, retried: the same id each time (a receiver de-duplicates by it), each
    # attempt signed afresh.
    events = [verify_webhook(r.headers, r.body, hook["secret"]) for r in received]
    assert len({e["id"] for e in events}) == 1
    assert events[0]["type"] == "job.succeeded" and events[0]["data"]["id"] == job_id


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/redirect/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.succeeded"])
    _start_job(webhook_api, steps=1, step_s=0.01)
    tries = len(RETRY_SCHEDULE_S) + 1

    def gave_up() -> bool:
        attempts = _attempts(webhook_api, hook["id"])
        return len(attempts) == tries and attempts[-1]["delivery_state"] == "failed"

    wait_for(gave_up, 30, "the delivery to give up", interval=0.2)
    attempts = _attempts(webhook_api, hook["id"])
    assert [a["attempt"] for a in attempts] == list(range(1, tries + 1))
    assert all(a["status_code"] == 301 and "not followed" in a["error"] for a in attempts)
    assert attempts[-1]["next_retry_at"] is None
    assert len(receiver.at(path)) == tries
    assert receiver.at("/ok/redirected") == []


def test_progress_events_are_throttled_to_new_10_percent_steps(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/ok/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.progress"])
    reports = 150
    job_id = _start_job(webhook_api, steps=reports, step_s=0.015)
    assert webhook_api.wait_job(job_id, timeout=60)["state"] == "succeeded"

    def all_delivered() -> bool:
        attempts = _attempts(webhook_api, hook["id"])
        return bool(attempts) and all(a["delivery_state"] == "succeeded" for a in attempts)

    wait_for(all_delivered, 30, "the progress deliveries", interval=0.2)
    events = sorted(
        (verify_webhook(r.headers, r.body, hook["secret"]) for r in receiver.at(path)), key=_when
    )
    assert len(events) == len(_attempts(webhook_api, hook["id"]))
    assert {e["type"] for e in events} == {"job.progress"}
    steps = [int(e["data"]["progress"]["percent"] // 10) for e in events]
    assert steps == sorted(set(steps)) and 1 <= steps[0] and steps[-1] <= 9
    assert 1 <= len(events) <= 9 < reports
    gaps = [(_when(b) - _when(a)).total_seconds() for a, b in zip(events, events[1:], strict=False)]
    assert all(gap >= PROGRESS_INTERVAL_S - 0.05 for gap in gaps), gaps


def test_canceling_a_running_job_sends_job_canceled(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/ok/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.started", "job.canceled"])
    job_id = _start_job(webhook_api, steps=2000, step_s=0.05)

    def started_arrived() -> bool:
        return any(r.event["type"] == "job.started" for r in receiver.at(path))

    wait_for(started_arrived, 30, "job.started")
    assert webhook_api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert webhook_api.wait_job(job_id, timeout=30)["state"] == "canceled"

    def canceled_arrived() -> bool:
        return any(r.event["type"] == "job.canceled" for r in receiver.at(path))

    wait_for(canceled_arrived, 30, "job.canceled")
    events = [verify_webhook(r.headers, r.body, hook["secret"]) for r in receiver.at(path)]
    canceled = [e for e in events if e["type"] == "job.canceled"]
    assert len(canceled) == 1 and canceled[0]["data"]["state"] == "canceled"
    assert uuid.UUID(canceled[0]["data"]["id"]) == uuid.UUID(job_id)


def test_a_failed_job_sends_job_failed_with_its_error(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    path = f"/ok/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.succeeded", "job.failed"])
    job_id = _start_job(webhook_api, steps=1, step_s=0.01, fail="the test asked to fail")
    assert webhook_api.wait_job(job_id, timeout=30)["state"] == "failed"

    wait_for(lambda: bool(receiver.at(path)), 30, "job.failed")
    (event,) = [verify_webhook(r.headers, r.body, hook["secret"]) for r in receiver.at(path)]
    assert event["type"] == "job.failed" and event["data"]["id"] == job_id
    assert event["data"]["state"] == "failed"
    assert event["data"]["error"] == "the test asked to fail"


def test_the_api_sends_the_event_of_a_queued_job_it_cancels(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    """The job ends in the API's process (no worker held it): its event is sent from
    there, after the cancel commits."""
    path = f"/ok/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.canceled"])
    job_id = _queued_job(webhook_api)
    assert webhook_api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

    wait_for(lambda: bool(receiver.at(path)), 30, "job.canceled")
    (event,) = [verify_webhook(r.headers, r.body, hook["secret"]) for r in receiver.at(path)]
    assert event["type"] == "job.canceled" and event["data"]["id"] == job_id


def test_the_sweep_sends_deliveries_that_are_due_and_unsent(
    webhook_api: ApiHarness, receiver: Receiver, token: str
) -> None:
    """A retry hours away, or a send lost to a broker outage, is sent by the API's reaper
    once due (services.webhooks.delivery.sweep), and only once while it waits."""
    path = f"/ok/{token}"
    hook = _endpoint(webhook_api, receiver.base + path, ["job.succeeded"])
    state = webhook_api.client.app.state.tailsynth  # type: ignore[attr-defined]
    with state.sessions.begin() as session:
        delivery = WebhookDelivery(
            endpoint_id=uuid.UUID(hook["id"]),
            event_id=f"evt_{uuid.uuid4().hex}",
            event_type="job.succeeded",
            job_id=uuid.uuid4(),
            body='{"type":"job.succeeded"}',
            state="pending",
            attempts=1,
            next_attempt_at=utcnow() - timedelta(seconds=1),
            dispatched_at=None,
        )
        session.add(delivery)
    assert sweep(state.celery, state.sessions, webhook_api.settings) >= 1
    assert sweep(state.celery, state.sessions, webhook_api.settings) == 0  # sent already

    wait_for(lambda: bool(receiver.at(path)), 30, "the swept delivery")
    (received,) = receiver.at(path)
    assert verify_webhook(received.headers, received.body, hook["secret"])["type"] == (
        "job.succeeded"
    )
    wait_for(lambda: bool(_attempts(webhook_api, hook["id"])), 10, "the attempt's record")
    (recorded,) = _attempts(webhook_api, hook["id"])
    assert recorded["attempt"] == 2 and recorded["status_code"] == 200


def _queued_job(api: ApiHarness) -> str:
    """A queued job of this tenant that was never sent."""
    state = api.client.app.state.tailsynth  # type: ignore[attr-defined]
    with state.sessions.begin() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == api.tenant_name))
        job = Job(
            tenant_id=tenant_id,
            kind="test",
            task_name=REPORT_PROGRESS,
            queue="ingest",
            params={"steps": 1, "step_s": 0},
            state=JobState.QUEUED,
            stage="queued",
        )
        session.add(job)
        session.flush()
        return str(job.id)

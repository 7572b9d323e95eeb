"""(5) A crash between commit and send: 1,000 POSTs, one in five crashing at the seam of
:func:`shared.jobs.dispatch`; after the reaper runs, 0 jobs lost and 0 run twice.

The POSTs go through the real app (``POST /v1/synthesis``, in-process, so the crash can
be injected) on Postgres and Redis. The app's own reaper thread runs every second. Two
kinds of crash, in the broker send that :func:`~shared.jobs.dispatch` makes after the
job row is committed:

- the broker refuses the send: the row stays unsent; the request still answers 202;
- the process dies right after the broker took the message, before ``dispatched_at`` is
  recorded: the client sees no answer and retries with its ``Idempotency-Key``; the
  reaper later sends the job a second time.

The jobs run in a real worker (two pool processes) whose task, under the synthesis
task's name, claims and ends each job through :func:`shared.jobs.run_job` and only
counts its runs (tests/fixtures/faults.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import func, select

from services.api.app import create_app
from shared.models import Job, JobState
from shared.settings import Settings
from tests.conftest import ApiHarness, issue_key
from tests.fixtures.faults import COUNTED_TASK, RUN_LOG_ENV, runs_by_job, worker_env
from tests.fixtures.rows import ready_dataset, ready_generator, tenant_id
from tests.fixtures.services import start_worker, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.service]

POSTS = 1000
#: Of every ten POSTs, the one at this position has its send refused by the broker...
REFUSED_AT = 3
#: ...and the one at this position dies right after its send.
DIED_AT = 7


class ProcessDied(BaseException):
    """The API process dying: nothing after the raise runs, and no ``except Exception``
    of the request path catches it."""


class ConnectionDropped(Exception):
    """What the client sees of :class:`ProcessDied`: no answer."""


class DyingProcess:
    """The app, whose process may die mid-request: the client's connection drops (the
    test client raises :class:`ConnectionDropped`) and the app keeps serving, as a
    restarted process would."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except ProcessDied:
            raise ConnectionDropped() from None


def _dropped(worker_log: str) -> int:
    """Deliveries the claim dropped: the job was final or held, or a racing delivery of
    it won the claim."""
    return worker_log.count("duplicate delivery dropped") + worker_log.count(
        "was claimed by another delivery first"
    )


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


@pytest.fixture
def settings(service_settings: Settings, redis_prefix: str) -> Settings:
    return service_settings.model_copy(
        update={
            "broker_key_prefix": f"{redis_prefix}commit-send-{uuid.uuid4().hex[:6]}:",
            "reaper_interval_s": 1.0,
        }
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[ApiHarness]:
    """The real app with its reaper thread running."""
    tenant = f"commit-send-{uuid.uuid4().hex[:8]}"
    key = issue_key(settings, tenant)
    with TestClient(DyingProcess(create_app(settings))) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield ApiHarness(client, settings, key, tenant)


def test_no_job_is_lost_or_run_twice_when_the_process_crashes_between_commit_and_send(
    api: ApiHarness,
    run_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.jobs")
    dataset_id = ready_dataset(api, {"MEL": 6, "NV": 6})
    generator_id = ready_generator(
        api, dataset_id, {"training": {"resolution": 16, "modes": ["inpaint"]}}
    )
    body = {"dataset_id": dataset_id, "generator_id": generator_id, "counts": {"MEL": 2}}

    celery = cast(DyingProcess, api.client.app).app.state.tailsynth.celery
    real_send = celery.send_task
    crash: dict[str, str | None] = {"next": None}

    def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
        assert name == COUNTED_TASK
        if threading.current_thread().name == "job-reaper":  # the crashes are the requests'
            return real_send(name, *args, **kwargs)
        how, crash["next"] = crash["next"], None
        if how == "refused":
            raise BrokerOperationalError("injected: the broker refused the connection")
        result = real_send(name, *args, **kwargs)
        if how == "died":
            raise ProcessDied()
        return result

    monkeypatch.setattr(celery, "send_task", send_task)

    answered: list[str] = []
    retried = 0
    for n in range(POSTS):
        headers = {"Idempotency-Key": f"synthesis-{n}"}
        crash["next"] = {REFUSED_AT: "refused", DIED_AT: "died"}.get(n % 10)
        try:
            response = api.client.post("/v1/synthesis", json=body, headers=headers)
        except ConnectionDropped:  # no answer: the client retries with the same key
            retried += 1
            response = api.client.post("/v1/synthesis", json=body, headers=headers)
        assert response.status_code == 202, response.text
        answered.append(response.json()["job_id"])

    tenant = tenant_id(api)
    jobs_of_tenant = select(func.count()).select_from(Job).where(Job.tenant_id == tenant)
    unsent = jobs_of_tenant.where(Job.dispatched_at.is_(None))
    # The app's reaper sends what the crashes left unsent (after its 5 s grace). No worker
    # has run anything yet, so a job whose process died after its send is sent twice.
    wait_for(lambda: api.rows(unsent)[0][0] == 0, 60, "the reaper to send every job")
    counting_worker = start_worker(
        tmp_path,
        worker_env(api.settings, **{RUN_LOG_ENV: str(run_log)}),
        queues="generate",
        app="tests.fixtures.faults",
        concurrency=2,
    )
    unfinished = jobs_of_tenant.where(Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
    try:
        wait_for(lambda: api.rows(unfinished)[0][0] == 0, 240, "every job to end", interval=1)
        # The second deliveries of the jobs that already ran are dropped, and say so.
        wait_for(
            lambda: _dropped(counting_worker.log()) >= retried,
            60,
            "every second delivery",
        )
    except TimeoutError:
        raise AssertionError(counting_worker.log()[-4000:]) from None
    finally:
        counting_worker.stop()

    rows = {
        str(job_id): (state, task)
        for job_id, state, task in api.rows(
            select(Job.id, Job.state, Job.task_name).where(Job.tenant_id == tenant)
        )
    }
    runs = runs_by_job(run_log)
    lost = [j for j in answered if runs.get(uuid.UUID(j), 0) == 0]
    ran_twice = [j for j, n in runs.items() if n > 1]
    extra_rows = len(rows) - len(set(answered))
    dropped = _dropped(counting_worker.log())
    resending = "reaper: (re)sending job "
    resent = {
        r.getMessage().removeprefix(resending)
        for r in caplog.records
        if r.getMessage().startswith(resending)
    }
    print(  # noqa: T201 (the figure this test proves)
        f"\n(5) {POSTS} POSTs, {POSTS // 10 * 2} crashes between commit and send "
        f"({POSTS // 10} sends refused, {retried} processes died after the send and were "
        f"retried with their Idempotency-Key), {len(resent)} jobs sent by the reaper: "
        f"{len(rows)} job rows, {len(runs)} jobs ran, {sum(runs.values())} runs; "
        f"{len(lost)} lost, {len(ran_twice) + extra_rows} duplicated ({dropped} second "
        "deliveries dropped by the claim)"
    )
    assert retried == POSTS // 10 and len(resent) == POSTS // 10 * 2
    assert len(set(answered)) == POSTS and len(rows) == POSTS
    assert lost == [] and ran_twice == [] and extra_rows == 0
    assert all(state == JobState.SUCCEEDED for state, _ in rows.values())

"""(6) Redis killed and restarted mid-queue: no queued job is lost.

The broker is a ``redis-server`` of the test's own (append-only file on, its own port
and directory; the machine's Redis keeps nothing on disk). Jobs of a test task queue up
before one worker process (one pool process); Redis is killed (SIGKILL) and started
again while most still wait, and jobs submitted while it is down are left unsent, as the API
leaves them, for the reaper. Every job must end ``succeeded``, each run once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerOperationalError
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.jobs import dispatch, reap
from shared.models import Job, JobState, Tenant
from shared.settings import Settings
from tests.fixtures import job_tasks
from tests.fixtures.faults import RedisServer, TcpProxy, worker_env
from tests.fixtures.services import start_worker, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.service]

QUEUED = 30
DURING_OUTAGE = 5
#: Each job's work (seconds): the queue takes ~QUEUED x this to drain.
WORK_S = 0.3


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def factory(service_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(service_settings)
    yield make_session_factory(engine)
    engine.dispose()


def _add_jobs(factory: sessionmaker[Session], logs: Path, n: int) -> list[uuid.UUID]:
    with factory.begin() as session:
        tenant = Tenant(name=f"redis-restart-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        jobs = [
            Job(
                tenant_id=tenant.id,
                kind="test",
                task_name=job_tasks.RECORD_RUN,
                queue="ingest",
                params={"log": str(logs / f"{i}.log"), "sleep_s": WORK_S},
                state=JobState.QUEUED,
                stage="queued",
            )
            for i in range(n)
        ]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def test_no_queued_job_is_lost_when_redis_restarts(
    service_settings: Settings,
    redis_server: RedisServer,
    factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    settings = service_settings.model_copy(
        update={"broker_url": SecretStr(redis_server.url), "broker_key_prefix": ""}
    )
    celery = create_celery_app(settings)
    (tmp_path / "runs").mkdir()
    worker = start_worker(
        tmp_path, worker_env(settings), queues="ingest", app="tests.fixtures.job_tasks"
    )
    try:
        job_ids = _add_jobs(factory, tmp_path / "runs", QUEUED + DURING_OUTAGE)
        for job_id in job_ids[:QUEUED]:
            dispatch(celery, factory, job_id)
        done = (
            select(func.count())
            .select_from(Job)
            .where(Job.id.in_(job_ids), Job.state == JobState.SUCCEEDED)
        )

        def succeeded() -> int:
            with factory() as session:
                return int(session.scalar(done) or 0)

        wait_for(lambda: succeeded() >= 3, 60, "the first jobs to run")
        redis_server.kill()
        waiting = QUEUED - succeeded()  # what Redis held (queued or in hand) when it went
        refused = 0
        for job_id in job_ids[QUEUED:]:  # the API commits the row, then the send fails
            try:
                dispatch(celery, factory, job_id)
            except Exception:
                refused += 1
        redis_server.start()
        queued_after = redis_server.queue_length("", "ingest")
        wait_for(
            lambda: (
                (reap(celery, factory, lease_s=settings.job_lease_s, grace_s=0) or True)
                and succeeded() == len(job_ids)
            ),
            120,
            "every job to succeed",
            interval=1,
        )
    except TimeoutError:
        raise AssertionError(worker.log()[-4000:]) from None
    finally:
        worker.stop()
    with factory() as session:
        states = [session.get(Job, job_id).state for job_id in job_ids]  # type: ignore[union-attr]
    runs = [
        len((tmp_path / "runs" / f"{i}.log").read_text().splitlines()) for i in range(len(job_ids))
    ]
    print(  # noqa: T201 (the figure this test proves)
        f"\n(6) {QUEUED} jobs queued, Redis (AOF) killed and restarted with {waiting} of "
        f"them waiting "
        f"({queued_after} still in its queue after the restart), {refused} sent while it "
        f"was down and re-sent by the reaper: {states.count(JobState.SUCCEEDED)} of "
        f"{len(job_ids)} succeeded, {sum(runs)} runs; "
        f"{len(job_ids) - states.count(JobState.SUCCEEDED)} lost"
    )
    assert refused == DURING_OUTAGE
    assert waiting >= QUEUED // 2, "Redis restarted after most of the queue had run"
    assert states == [JobState.SUCCEEDED] * len(job_ids)
    assert runs == [1] * len(job_ids)


def test_a_hung_redis_fails_a_send_in_bounded_time_and_loses_no_job(
    service_settings: Settings,
    redis_server: RedisServer,
    factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    """Redis (behind a proxy) takes connections and never answers: a send fails within
    its socket timeouts instead of hanging the request or the reaper; once Redis answers
    again the reaper sends the job and the worker, reconnected, runs it."""
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    proxy.up()
    settings = service_settings.model_copy(
        update={
            "broker_url": SecretStr(f"redis://{proxy.address}/0"),
            "broker_key_prefix": "",
            "broker_socket_timeout_s": 2.0,
        }
    )
    celery = create_celery_app(settings)
    (tmp_path / "runs").mkdir()
    worker = start_worker(
        tmp_path, worker_env(settings), queues="ingest", app="tests.fixtures.job_tasks"
    )
    try:
        (job_id,) = _add_jobs(factory, tmp_path / "runs", 1)
        proxy.hang()
        started = time.monotonic()
        with pytest.raises(BrokerOperationalError):
            dispatch(celery, factory, job_id)
        failed_after_s = time.monotonic() - started
        proxy.up()
        with factory() as session:
            assert session.get(Job, job_id).dispatched_at is None  # type: ignore[union-attr]
        sent = reap(celery, factory, lease_s=settings.job_lease_s, grace_s=0)
        started = time.monotonic()

        def final() -> bool:
            with factory() as session:
                return session.get(Job, job_id).state.is_final  # type: ignore[union-attr]

        wait_for(final, 120, "the job to run once Redis answers again")
        ran_after_s = time.monotonic() - started
    except TimeoutError:
        raise AssertionError(worker.log()[-4000:]) from None
    finally:
        worker.stop()
        proxy.down()
    with factory() as session:
        state = session.get(Job, job_id).state  # type: ignore[union-attr]
    runs = len((tmp_path / "runs" / "0.log").read_text().splitlines())
    print(  # noqa: T201 (the figure this test proves)
        f"\n(6) Redis hung (connections taken, never answered): the send failed after "
        f"{failed_after_s:.1f}s (2 s socket timeouts); once it answered, the reaper sent "
        f"{sent} job and the reconnected worker ran it in {ran_after_s:.1f}s: {state.value}, "
        f"{runs} run"
    )
    assert failed_after_s < 30
    assert sent == 1 and state == JobState.SUCCEEDED and runs == 1

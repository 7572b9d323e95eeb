"""The job system runs a job once, survives faults and ends a job with its resource
(shared/jobs.py).

The first tests run in-process on the embedded database. The service-tier tests
run misbehaving tasks (tests/fixtures/job_tasks.py) in a real Celery worker process,
with two pool processes, on Postgres and Redis. That worker has a 3 s lease, 2 attempts
per stage and 3 quick tries for a transient error.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.celery_app import TASK_QUEUES, create_celery_app
from shared.db import make_engine, make_session_factory
from shared.jobs import JobContext, JobPolicy, dispatch, reap, run_job
from shared.models import (
    CuratedSet,
    Dataset,
    DatasetState,
    Generator,
    Job,
    JobState,
    Tenant,
    utcnow,
)
from shared.settings import Settings
from tests.conftest import ApiHarness
from tests.fixtures import job_tasks
from tests.fixtures.services import ManagedProcess, start_worker, wait_for

LEASE_S = 3
MAX_ATTEMPTS = 2
TRANSIENT_TRIES = 3


def _runs(log: Path) -> list[str]:
    """One line per run of a job's work: ``pid attempt``."""
    return log.read_text().splitlines() if log.exists() else []


def _add_tenant(factory: sessionmaker[Session]) -> uuid.UUID:
    with factory.begin() as session:
        tenant = Tenant(name=f"jobs-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        return tenant.id


def _add_job(
    factory: sessionmaker[Session],
    tenant_id: uuid.UUID,
    task_name: str,
    log: Path,
    params: dict[str, Any] | None = None,
    **columns: Any,
) -> uuid.UUID:
    """A job of a test task (queue ``ingest``), queued unless ``columns`` say otherwise."""
    with factory.begin() as session:
        job = Job(
            tenant_id=tenant_id,
            kind="test",
            task_name=task_name,
            queue="ingest",
            params={"log": str(log), **(params or {})},
            **{"state": JobState.QUEUED, "stage": "queued", **columns},
        )
        session.add(job)
        session.flush()
        return job.id


def _job(factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# ----------------------------------------------------------------- embedded, in-process


@pytest.fixture
def local_factory(local_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(local_settings)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_late_message_of_an_earlier_stage_is_dropped(
    local_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A synthesis job that moved on to filtering ignores a stale generation message."""
    log = tmp_path / "runs.log"
    job_id = _add_job(
        local_factory,
        _add_tenant(local_factory),
        "tailsynth.filter_candidates",
        log,
        state=JobState.RUNNING,
        stage="filtering",
    )
    policy = JobPolicy(lease_s=60)
    run_job(
        local_factory, str(job_id), lambda ctx: {}, policy=policy, task_name="tailsynth.synthesize"
    )
    job = _job(local_factory, job_id)
    assert (job.state, job.stage, job.attempts) == (JobState.RUNNING, "filtering", 0)
    run_job(
        local_factory,
        str(job_id),
        lambda ctx: {"filtered": True},
        policy=policy,
        task_name="tailsynth.filter_candidates",
    )
    job = _job(local_factory, job_id)
    assert job.state == JobState.SUCCEEDED and job.result == {"filtered": True}


def test_a_claim_past_the_cap_fails_the_job_with_its_last_error(
    local_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _add_job(
        local_factory,
        _add_tenant(local_factory),
        job_tasks.RECORD_RUN,
        tmp_path / "runs.log",
        state=JobState.RUNNING,
        stage="decoding",
        attempts=3,
        stage_attempts=3,
        worker_id="elsewhere/1/dead",
        lease_until=utcnow() - timedelta(seconds=1),
    )
    ran: list[int] = []
    run_job(
        local_factory,
        str(job_id),
        lambda ctx: {"ran": ran.append(1)},
        policy=JobPolicy(max_attempts=3),
        task_name=job_tasks.RECORD_RUN,
    )
    job = _job(local_factory, job_id)
    assert not ran and job.state == JobState.FAILED and job.attempts == 3
    assert job.error is not None
    assert job.error.startswith("gave up after 3 attempts of stage 'decoding'; last error: ")
    assert "attempt 3 on elsewhere/1/dead ended without a result" in job.error


def test_an_attempt_whose_job_was_taken_over_stops_and_writes_nothing(
    local_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Fencing: once another delivery claimed the job (this attempt's lease ran out while
    it hung), the old attempt's progress, result and end are dropped."""
    job_id = _add_job(
        local_factory, _add_tenant(local_factory), job_tasks.RECORD_RUN, tmp_path / "runs.log"
    )

    def hung_then_resumed(ctx: JobContext) -> dict[str, Any]:
        with local_factory.begin() as session:  # what a newer claim writes
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(attempts=Job.attempts + 1, worker_id="elsewhere/2/new")
            )
        ctx.progress(99, stage="stale")
        assert ctx.should_cancel()
        ctx.check_cancel()  # raises LeaseLost
        return {"stale": True}

    run_job(
        local_factory,
        str(job_id),
        hung_then_resumed,
        policy=JobPolicy(lease_s=60),
        task_name=job_tasks.RECORD_RUN,
    )
    job = _job(local_factory, job_id)
    assert (job.state, job.worker_id, job.attempts) == (JobState.RUNNING, "elsewhere/2/new", 2)
    assert job.done == 0 and job.stage == "starting" and job.result == {}


def test_the_reaper_resends_lost_work_only(
    local_settings: Settings, local_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A queued job that was sent waits however long its queue is busy; a job whose lease
    ran out is sent again, once; one under a live lease is left to its worker."""
    tenant_id = _add_tenant(local_factory)
    long_ago = utcnow() - timedelta(hours=1)
    log = tmp_path / "runs.log"
    waiting = _add_job(local_factory, tenant_id, job_tasks.RECORD_RUN, log, dispatched_at=long_ago)
    running = {
        "state": JobState.RUNNING,
        "stage": "working",
        "attempts": 1,
        "stage_attempts": 1,
        "dispatched_at": long_ago,
        "worker_id": "elsewhere/1/abcd",
    }
    stale = _add_job(
        local_factory,
        tenant_id,
        job_tasks.RECORD_RUN,
        log,
        **running,
        lease_until=utcnow() - timedelta(seconds=5),
    )
    live = _add_job(
        local_factory,
        tenant_id,
        job_tasks.RECORD_RUN,
        log,
        **running,
        lease_until=utcnow() + timedelta(seconds=300),
    )
    celery = create_celery_app(local_settings)
    assert reap(celery, local_factory, lease_s=600) == 1
    assert _job(local_factory, waiting).dispatched_at == _job(local_factory, live).dispatched_at
    assert _job(local_factory, stale).dispatched_at != _job(local_factory, live).dispatched_at
    assert reap(celery, local_factory, lease_s=600) == 0  # sent once, not every pass


def test_each_task_stops_softly_before_its_hard_time_limit(local_settings: Settings) -> None:
    annotations = create_celery_app(local_settings).conf.task_annotations
    for name, queue in TASK_QUEUES.items():
        limits = annotations[name]
        hard = getattr(local_settings, f"{queue}_time_limit_s")
        assert limits["time_limit"] == hard
        assert 0 < limits["soft_time_limit"] < hard


def test_cancel_before_start_ends_the_resource(
    local_api: ApiHarness, local_factory: sessionmaker[Session]
) -> None:
    """No worker runs in the embedded harness: every job stays queued until canceled."""
    created = local_api.client.post(
        "/v1/datasets/demo", json={"total": 40, "image_size": 16}
    ).json()
    with local_factory.begin() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == local_api.tenant_name))
        assert tenant is not None
        dataset = Dataset(tenant_id=tenant.id, name="ready", format="csv", state=DatasetState.READY)
        session.add(dataset)
        session.flush()
        generator = Generator(tenant_id=tenant.id, dataset_id=dataset.id, kind="trained")
        curated = CuratedSet(tenant_id=tenant.id, dataset_id=dataset.id)
        session.add_all([generator, curated])
        session.flush()
        jobs = {
            "generator": Job(
                tenant_id=tenant.id,
                kind="train_generator",
                task_name="tailsynth.train_generator",
                queue="generate",
                params={"generator_id": str(generator.id)},
            ),
            "curated": Job(
                tenant_id=tenant.id,
                kind="synthesis",
                task_name="tailsynth.synthesize",
                queue="generate",
                params={"curated_set_id": str(curated.id)},
            ),
        }
        session.add_all(jobs.values())
        session.flush()
        job_ids = {name: str(job.id) for name, job in jobs.items()}
        generator_id, curated_id = generator.id, curated.id
    assert (generator.state, curated.state) == ("training", "pending")
    job_ids["dataset"] = created["job_id"]
    for job_id in job_ids.values():
        answer = local_api.client.post(f"/v1/jobs/{job_id}/cancel")
        assert answer.status_code == 202 and answer.json()["state"] == "canceled", answer.text
    dataset_read = local_api.client.get(f"/v1/datasets/{created['dataset_id']}").json()
    assert dataset_read["state"] == "failed"
    assert dataset_read["ingest_report"]["error"] == "ingest canceled"
    with local_factory() as session:
        assert session.get(Generator, generator_id).state == "canceled"  # type: ignore[union-attr]
        assert session.get(CuratedSet, curated_id).state == "canceled"  # type: ignore[union-attr]


# ----------------------------------------------------------------- a real worker


@dataclass
class JobWorker:
    settings: Settings
    factory: sessionmaker[Session]
    celery: Celery
    tenant_id: uuid.UUID
    process: ManagedProcess

    def add(self, task_name: str, log: Path, **params: Any) -> uuid.UUID:
        return _add_job(self.factory, self.tenant_id, task_name, log, params)

    def wait_final(self, job_id: uuid.UUID, timeout: float = 60, reap_s: float = 0) -> Job:
        """The job once final; with ``reap_s``, the reaper runs every ``reap_s`` meanwhile."""

        def final() -> bool:
            if reap_s:
                reap(self.celery, self.factory, lease_s=LEASE_S, grace_s=0)
            return _job(self.factory, job_id).state.is_final

        try:
            wait_for(final, timeout, f"job {job_id}", interval=reap_s or 0.1)
        except TimeoutError:
            raise AssertionError(f"{self.process.log()[-4000:]}") from None
        return _job(self.factory, job_id)


@pytest.fixture(scope="module")
def job_worker(
    service_settings: Settings, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobWorker]:
    """A worker of the misbehaving tasks on its own broker prefix, two pool processes."""
    settings = service_settings.model_copy(
        update={
            "broker_key_prefix": f"{redis_prefix}jobs:",
            "job_lease_s": LEASE_S,
            "job_max_attempts": MAX_ATTEMPTS,
            "job_transient_tries": TRANSIENT_TRIES,
            "job_transient_backoff_s": 0.05,
            "job_transient_backoff_max_s": 0.2,
        }
    )
    env = {**os.environ, **settings.environ(), "OMP_NUM_THREADS": "1"}
    process = start_worker(
        tmp_path_factory.mktemp("job-worker"),
        env,
        queues="ingest",
        app="tests.fixtures.job_tasks",
        concurrency=2,
    )
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        yield JobWorker(
            settings, factory, create_celery_app(settings), _add_tenant(factory), process
        )
    finally:
        process.stop()
        engine.dispose()


pytest_service = pytest.mark.service


@pytest_service
def test_two_deliveries_of_one_job_run_it_once(job_worker: JobWorker, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    job_id = job_worker.add(job_tasks.RECORD_RUN, log, sleep_s=2)
    dispatch(job_worker.celery, job_worker.factory, job_id)
    # The same message again, as a broker re-delivery or a second send would: both pool
    # processes are free, so both deliveries are taken at once.
    job_worker.celery.send_task(job_tasks.RECORD_RUN, args=[str(job_id)], queue="ingest")
    job = job_worker.wait_final(job_id)
    assert job.state == JobState.SUCCEEDED and job.attempts == 1, job.error
    assert len(_runs(log)) == 1
    # The second delivery lost the conditional claim, or found the first one's live lease.
    assert re.search(
        f"job {job_id} (is held by .* until|was claimed by another delivery first)",
        job_worker.process.log(),
    )


@pytest_service
def test_a_crashing_job_stops_at_the_attempt_cap_with_its_last_error(
    job_worker: JobWorker, tmp_path: Path
) -> None:
    """Each run kills its pool process; the redelivered task takes over (the owner is gone)
    until the stage has had its attempts."""
    log = tmp_path / "runs.log"
    job_id = job_worker.add(job_tasks.CRASH, log)
    dispatch(job_worker.celery, job_worker.factory, job_id)
    job = job_worker.wait_final(job_id, reap_s=0.5)
    assert job.state == JobState.FAILED and job.attempts == MAX_ATTEMPTS
    assert len(_runs(log)) == MAX_ATTEMPTS
    assert job.error is not None
    assert job.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts of stage 'starting'")
    assert f"attempt {MAX_ATTEMPTS} on " in job.error and "ended without a result" in job.error


@pytest_service
def test_a_transient_error_is_retried_inside_the_task_then_succeeds(
    job_worker: JobWorker, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    job_id = job_worker.add(job_tasks.FLAKY, log, fail_times=TRANSIENT_TRIES - 1)
    dispatch(job_worker.celery, job_worker.factory, job_id)
    job = job_worker.wait_final(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result == {"runs": TRANSIENT_TRIES}
    # Every try ran under the first claim: retried in the task, not re-sent as a new attempt.
    assert job.attempts == 1 and {line.split()[1] for line in _runs(log)} == {"1"}
    assert "transient OperationalError" in job_worker.process.log()


@pytest_service
def test_a_transient_error_past_its_retries_fails_the_job_at_the_cap(
    job_worker: JobWorker, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    job_id = job_worker.add(job_tasks.FLAKY, log, fail_times=1000)
    dispatch(job_worker.celery, job_worker.factory, job_id)
    job = job_worker.wait_final(job_id, reap_s=0.5)
    assert job.state == JobState.FAILED and job.attempts == MAX_ATTEMPTS
    assert len(_runs(log)) == MAX_ATTEMPTS * TRANSIENT_TRIES
    assert job.error is not None and "last error: OperationalError" in job.error
    assert f"after {TRANSIENT_TRIES} tries" in job.error


@pytest_service
def test_a_stale_lease_reruns_and_a_live_one_does_not(
    job_worker: JobWorker, tmp_path: Path
) -> None:
    running = {
        "state": JobState.RUNNING,
        "stage": "working",
        "attempts": 1,
        "stage_attempts": 1,
        "dispatched_at": utcnow() - timedelta(minutes=5),
    }
    stale_log, live_log = tmp_path / "stale.log", tmp_path / "live.log"
    stale = _add_job(
        job_worker.factory,
        job_worker.tenant_id,
        job_tasks.RECORD_RUN,
        stale_log,
        **running,
        worker_id="gone-host/1/0000",
        lease_until=utcnow() - timedelta(seconds=1),
    )
    live = _add_job(
        job_worker.factory,
        job_worker.tenant_id,
        job_tasks.RECORD_RUN,
        live_log,
        **running,
        worker_id="busy-host/1/1111",
        lease_until=utcnow() + timedelta(minutes=5),
    )
    reap(job_worker.celery, job_worker.factory, lease_s=LEASE_S)
    job = job_worker.wait_final(stale)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2 and job.error is None
    assert len(_runs(stale_log)) == 1
    # The live one was not re-sent; delivered anyway, it is dropped.
    assert _job(job_worker.factory, live).dispatched_at == running["dispatched_at"]
    job_worker.celery.send_task(job_tasks.RECORD_RUN, args=[str(live)], queue="ingest")
    wait_for(
        lambda: f"job {live} is held by busy-host/1/1111" in job_worker.process.log(),
        30,
        "the live lease's delivery to be dropped",
    )
    job = _job(job_worker.factory, live)
    assert job.state == JobState.RUNNING and job.attempts == 1 and not _runs(live_log)


@pytest_service
def test_a_task_past_its_soft_time_limit_records_why_it_stopped(
    job_worker: JobWorker, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    job_id = job_worker.add(job_tasks.OVERRUN, log)
    started = time.monotonic()
    dispatch(job_worker.celery, job_worker.factory, job_id)
    job = job_worker.wait_final(job_id)
    assert time.monotonic() - started < job_tasks.OVERRUN_LIMITS[1]
    assert job.state == JobState.FAILED and len(_runs(log)) == 1
    assert job.error is not None
    assert job.error.startswith(
        f"stopped at the task's time limit ({job_tasks.OVERRUN_LIMITS[0]} s)"
    )

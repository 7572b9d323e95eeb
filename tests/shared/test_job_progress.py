"""A job's progress never goes back: a stage that begins (a count that restarts inside a
task, or a hand-over to another queue's task) continues from where the job was, and the
job reaches 100 % when it ends (shared/jobs.py, as ``GET /v1/jobs/{id}`` shows it).
Embedded database, in-process jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.api.schemas import JobRead, Progress
from shared.db import make_engine, make_session_factory
from shared.jobs import JobContext, JobPolicy, NextStage, create_job, run_job
from shared.models import Job, Tenant
from shared.settings import Settings

POLICY = JobPolicy(lease_s=60)


@pytest.fixture
def factory(local_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(local_settings)
    yield make_session_factory(engine)
    engine.dispose()


def _synthesis_job(factory: sessionmaker[Session]) -> uuid.UUID:
    with factory.begin() as session:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        return create_job(
            session, tenant_id=tenant.id, kind="synthesis", task_name="tailsynth.synthesize"
        ).id


class Shown:
    """The progress the API shows, read after each report."""

    def __init__(self, factory: sessionmaker[Session], job_id: uuid.UUID) -> None:
        self.factory, self.job_id = factory, job_id
        self.seen: list[Progress] = []

    def __call__(self) -> None:
        with self.factory() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            self.seen.append(JobRead.of(job).progress)

    @property
    def percents(self) -> list[float]:
        return [progress.percent for progress in self.seen]


def _report(ctx: JobContext, shown: Shown, *reports: tuple[Any, ...]) -> None:
    for done, total, stage in reports:
        ctx.progress(done, total, stage)
        shown()


def test_progress_goes_on_across_a_hand_over_and_a_restarted_count(
    factory: sessionmaker[Session],
) -> None:
    """Generation (8 of 8), hand-over, then the filter's stages each counting from 0:
    the stage's own percent restarts, the job's never goes back."""
    job_id = _synthesis_job(factory)
    shown = Shown(factory, job_id)
    celery = SimpleNamespace(send_task=lambda *args, **kwargs: None)

    def generate(ctx: JobContext) -> NextStage:
        _report(ctx, shown, (0, None, "loading data"), (0, 8, "generating"), (4, None, None))
        _report(ctx, shown, (8, None, None))
        return NextStage("tailsynth.filter_candidates", "filtering")

    def filter_(ctx: JobContext) -> dict[str, Any]:
        shown()  # as handed over, before the stage reports
        _report(ctx, shown, (0, None, "fitting filter"), (0, 8, "filtering"), (8, None, None))
        _report(ctx, shown, (0, 3, "delivering"), (3, None, None))
        return {}

    run_job(factory, str(job_id), generate, celery=celery, policy=POLICY, task_name=None)  # type: ignore[arg-type]
    run_job(factory, str(job_id), filter_, policy=POLICY, task_name=None)
    shown()

    assert shown.percents == sorted(shown.percents), shown.percents
    assert shown.percents[3] == 90.0  # generation done: 90 % of the job
    assert shown.percents[-1] == 100.0
    stage_percents = [progress.stage_percent for progress in shown.seen]
    assert stage_percents[3] == 100.0 and stage_percents[4] == 0.0  # the stage restarts
    assert 90.0 < shown.percents[-2] < 100.0  # delivered, the job not yet ended


def test_a_count_restarting_inside_one_task_keeps_the_jobs_progress(
    factory: sessionmaker[Session],
) -> None:
    """Training to its last step, then the quality probe reports 0 of the same total."""
    job_id = _synthesis_job(factory)
    shown = Shown(factory, job_id)

    def train(ctx: JobContext) -> dict[str, Any]:
        _report(ctx, shown, (0, 10, "training"), (10, None, None), (0, None, "quality probe"))
        return {}

    run_job(factory, str(job_id), train, policy=POLICY, task_name=None)
    shown()
    assert shown.percents == [0.0, 90.0, 90.0, 100.0]

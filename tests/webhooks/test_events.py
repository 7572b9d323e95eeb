"""The job-event hook (shared.webhooks) on the embedded database: deliveries are
recorded in the job's own transaction and sent only once that transaction commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.webhooks.service import new_secret
from shared.db import make_engine, make_session_factory
from shared.jobs import end_job
from shared.models import Job, JobState, Tenant, WebhookDelivery, WebhookEndpoint
from shared.settings import Settings
from shared.webhooks import EVENT_TYPES, attach_celery


class RecordingCelery:
    """Stands in for the broker: records each send and whether, at that moment, another
    connection could already read the delivery row it names."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self.sends: list[tuple[str, bool]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        with self.factory() as other:
            visible = other.get(WebhookDelivery, uuid.UUID(args[0])) is not None
        self.sends.append((queue, visible))


@pytest.fixture
def sessions(local_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(local_settings)
    yield make_session_factory(engine)
    engine.dispose()


def _job_with_endpoints(factory: sessionmaker[Session], events: list[list[str]]) -> uuid.UUID:
    with factory.begin() as session:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        for wanted in events:
            session.add(
                WebhookEndpoint(
                    tenant_id=tenant.id,
                    url="https://93.184.215.14/hook",
                    events=wanted,
                    secret=new_secret(),
                )
            )
        job = Job(
            tenant_id=tenant.id,
            kind="test",
            task_name="tests.none",
            queue="ingest",
            state=JobState.RUNNING,
        )
        session.add(job)
        session.flush()
        return job.id


def test_an_event_is_sent_only_after_the_job_transaction_commits(
    sessions: sessionmaker[Session],
) -> None:
    celery = RecordingCelery(sessions)
    attach_celery(sessions, celery)  # type: ignore[arg-type]
    job_id = _job_with_endpoints(sessions, [list(EVENT_TYPES), ["job.succeeded"], ["job.failed"]])
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        end_job(session, job, JobState.SUCCEEDED, result={})
        assert celery.sends == []  # the savepoint released; the job's change is not committed
    # One event for the two endpoints that asked for it, sent once each, readable by then.
    assert celery.sends == [("webhooks", True), ("webhooks", True)]
    with sessions() as session:
        rows = session.query(WebhookDelivery).filter_by(job_id=job_id).all()
    assert {row.event_type for row in rows} == {"job.succeeded"}
    assert len({row.event_id for row in rows}) == 1 and len(rows) == 2


def test_a_rolled_back_change_announces_nothing(sessions: sessionmaker[Session]) -> None:
    celery = RecordingCelery(sessions)
    attach_celery(sessions, celery)  # type: ignore[arg-type]
    job_id = _job_with_endpoints(sessions, [list(EVENT_TYPES)])
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        end_job(session, job, JobState.FAILED, error="x")
        session.rollback()
    with sessions.begin() as session:  # a later commit of the same factory sends nothing old
        session.add(Tenant(name=f"t-{uuid.uuid4().hex[:8]}"))
    assert celery.sends == []
    with sessions() as session:
        assert session.query(WebhookDelivery).filter_by(job_id=job_id).count() == 0

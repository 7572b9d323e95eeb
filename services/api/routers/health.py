"""``GET /v1/health``: each component and each queue; no auth.

``up`` only when the database, the broker and the store answer and every queue has a
live worker (:class:`~services.api.workers.WorkerCensus`); each queue also says how long
its longest-waiting job has waited. A down component answers 503: this API cannot serve.
A queue without a worker answers 200 ``degraded``, naming the queue: the API serves and
jobs wait for the worker (and compose starts the workers only once the API is healthy).

Anyone can call it, so a failure is named by a fixed word; the exception itself (hosts,
users, paths, driver messages) goes to the log, never to the caller, and workers are
counted, not named (their names carry host names).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import and_, case, func, or_, select, text
from sqlalchemy.orm import Session

from services.api.deps import AppState, StateDep
from services.api.schemas import ComponentHealth, Health, QueueHealth
from shared.celery_app import QUEUES
from shared.models import Job, JobState, utcnow

router = APIRouter(prefix="/v1", tags=["health"])
log = logging.getLogger(__name__)


def _check(name: str, probe: Callable[[], object]) -> ComponentHealth:
    try:
        probe()
    except Exception:  # a health check reports failures, it does not raise them
        log.warning("health: %s is unreachable", name, exc_info=True)
        return ComponentHealth(status="down", detail="unreachable")
    return ComponentHealth(status="up")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def oldest_waiting(session: Session) -> dict[str, datetime]:
    """Per queue, since when its longest-waiting job has waited for a worker: a queued
    job since it was created, one between stages (or given back) since its hand-over."""
    since = case(
        (Job.state == JobState.QUEUED, Job.created_at),
        else_=func.coalesce(Job.heartbeat_at, Job.created_at),
    )
    waiting = or_(
        Job.state == JobState.QUEUED,
        and_(Job.state == JobState.RUNNING, Job.worker_id.is_(None)),
    )
    rows = session.execute(
        select(Job.queue, func.min(since)).where(waiting).group_by(Job.queue)
    ).all()
    return {str(queue): _aware(moment) for queue, moment in rows if moment is not None}


def _queues(state: AppState, *, ask_workers: bool) -> dict[str, QueueHealth]:
    """Each queue's live workers (unknown when they cannot be asked) and waiting time."""
    workers: dict[str, list[str]] | None = None
    try:
        workers = state.workers.by_queue() if ask_workers else None
    except Exception:
        log.warning("health: the workers could not be asked", exc_info=True)
    try:
        with state.sessions() as session:
            waiting = oldest_waiting(session)
    except Exception:
        log.warning("health: the job queue could not be read", exc_info=True)
        waiting = {}
    now = utcnow()
    queues: dict[str, QueueHealth] = {}
    for queue in QUEUES:
        live = None if workers is None else len(workers.get(queue, []))
        since = waiting.get(queue)
        queues[queue] = QueueHealth(
            status="unknown" if live is None else ("up" if live else "down"),
            workers=live,
            oldest_waiting_s=None if since is None else round((now - since).total_seconds(), 1),
        )
    return queues


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(state: StateDep) -> JSONResponse:
    def db() -> None:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))

    def broker() -> None:
        with state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    components = {
        "db": _check("db", db),
        "broker": _check("broker", broker),
        "storage": _check("storage", state.store.ping),
    }
    down = [name for name, component in components.items() if component.status != "up"]
    queues = _queues(state, ask_workers="broker" not in down)
    idle = [name for name, queue in queues.items() if queue.status == "down"]
    problems = [f"{name} is unreachable" for name in down]
    if idle:
        problems.append(f"no live worker on queue {', '.join(idle)}")
    if not down and any(queue.status == "unknown" for queue in queues.values()):
        problems.append("the workers could not be asked")
    body = Health(
        status="degraded" if problems else "up",
        components=components,
        queues=queues,
        detail="; ".join(problems) or None,
    )
    return JSONResponse(body.model_dump(), status_code=503 if down else 200)

"""Commit a job-creating request, then send its task (rows first, then tasks)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.deps import AppState
from services.api.idempotency import Idempotency
from services.webhooks.schemas import WebhookCreate
from services.webhooks.service import create_endpoint
from shared.jobs import dispatch

log = logging.getLogger(__name__)


def submit_job(
    state: AppState,
    session: Session,
    idempotency: Idempotency,
    create: Callable[[], tuple[uuid.UUID, Any]],
    *,
    on_abort: Callable[[], None] | None = None,
    webhook: WebhookCreate | None = None,
) -> JSONResponse:
    """Replay an idempotent answer, or create rows, commit once, and dispatch.

    ``create`` adds the rows (a job among them) to ``session`` and returns the job id
    and the response body. ``on_abort`` undoes side effects outside the database (an
    uploaded object) when nothing gets committed. ``webhook`` (the request's) becomes an
    endpoint for this job's events, committed with it; the body's ``webhook`` field then
    shows it with its secret.
    """
    replay = idempotency.replay()
    if replay is not None:
        if on_abort:
            on_abort()
        return replay
    try:
        job_id, body = create()
        if webhook is not None:
            endpoint = create_endpoint(
                session,
                idempotency.tenant_id,
                webhook,
                state.settings,
                job_id=job_id,
                field_prefix="webhook.",
            )
            body = body.model_copy(update={"webhook": endpoint})
        response = idempotency.record(202, body)
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key committed first.
        session.rollback()
        if on_abort:
            on_abort()
        replay = idempotency.replay()
        if replay is None:
            raise
        return replay
    except BaseException:
        session.rollback()
        if on_abort:
            on_abort()
        raise
    try:
        dispatch(state.celery, state.sessions, job_id)
    except Exception:  # the broker is down: the reaper sends the committed job later
        log.exception("could not send job %s now; the reaper will retry", job_id)
    return response

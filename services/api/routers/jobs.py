"""``/v1/jobs``: list with filters and pagination, get, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from services.api.deps import LimitDep, OffsetDep, SessionDep, TenantDep
from services.api.schemas import JobRead, Page
from shared.db import get_owned
from shared.errors import InvalidInput
from shared.jobs import request_cancel
from shared.models import Job, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def get_job(session: SessionDep, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    return get_owned(session, Job, job_id, tenant_id, "job")


@router.get("", response_model=Page[JobRead])
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    state: Annotated[
        str | None, Query(description="queued|running|succeeded|partial|failed|canceled")
    ] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    limit: LimitDep = 50,
    offset: OffsetDep = 0,
) -> Page[JobRead]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state is not None:
        try:
            query = query.where(Job.state == JobState(state))
        except ValueError as exc:
            raise InvalidInput(
                f"unknown state {state!r}; use one of {', '.join(s.value for s in JobState)}",
                field="state",
            ) from exc
    if kind is not None:
        query = query.where(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return Page(items=[JobRead.of(j) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobRead, responses={404: {"description": "unknown id"}})
def read_job(session: SessionDep, tenant_id: TenantDep, job_id: uuid.UUID) -> JobRead:
    return JobRead.of(get_job(session, tenant_id, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    status_code=202,
    responses={404: {"description": "unknown id"}, 409: {"description": "already finished"}},
)
def cancel_job(session: SessionDep, tenant_id: TenantDep, job_id: uuid.UUID) -> JobRead:
    """Cancel: a queued job ends now; a running one stops at its next chunk, keeping its work."""
    job = request_cancel(session, get_job(session, tenant_id, job_id))
    session.commit()
    return JobRead.of(job)

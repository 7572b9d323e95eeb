"""Request dependencies as named types: the session, the tenant, the store, Celery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from services.api.auth import authenticate
from services.api.workers import WorkerCensus
from shared.errors import Unauthorized
from shared.settings import Settings
from shared.storage import ObjectStore


@dataclass
class AppState:
    """Made once in the lifespan and shared by every request."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery
    workers: WorkerCensus


def get_state(request: Request) -> AppState:
    return request.app.state.tailsynth  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """One session per request; the route commits once, at its edge."""
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_tenant_id(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
) -> uuid.UUID:
    """The tenant of the request's key, looked up afresh (a revoked key is refused from
    its next request on); records the key's use, at most once a minute. Not in the
    request's session: authentication holds no connection while the route runs."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    tenant_id = authenticate(
        state.sessions,
        authorization[7:].strip(),
        interval_s=state.settings.api_key_last_used_interval_s,
    )
    if tenant_id is None:
        raise Unauthorized("unknown or revoked API key")
    return tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant_id)]
IdempotencyKeyDep = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=255, description="replay-safe POST")
]
LimitDep = Annotated[int, Query(ge=1, le=500)]
# Bounded: an offset past a 64-bit integer reached the database as an overflow (a 500).
OffsetDep = Annotated[int, Query(ge=0, le=2**31 - 1)]

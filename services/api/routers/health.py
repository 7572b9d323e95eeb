"""``GET /v1/health``: each component and its state; no auth.

Anyone can call it, so a failure is named by a fixed word; the exception itself (hosts,
users, paths, driver messages) goes to the log, never to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.api.deps import StateDep
from services.api.schemas import ComponentHealth, Health

router = APIRouter(prefix="/v1", tags=["health"])
log = logging.getLogger(__name__)


def _check(name: str, probe: Callable[[], object]) -> ComponentHealth:
    try:
        probe()
    except Exception:  # a health check reports failures, it does not raise them
        log.warning("health: %s is unreachable", name, exc_info=True)
        return ComponentHealth(status="down", detail="unreachable")
    return ComponentHealth(status="up")


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
    ok = all(c.status == "up" for c in components.values())
    body = Health(status="up" if ok else "degraded", components=components)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

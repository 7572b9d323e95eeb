"""``GET /v1/health``: each component and its state; no auth."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.api.deps import StateDep
from services.api.schemas import ComponentHealth, Health

router = APIRouter(prefix="/v1", tags=["health"])


def _check(probe) -> ComponentHealth:  # type: ignore[no-untyped-def]
    try:
        probe()
    except Exception as exc:  # a health check reports failures, it does not raise them
        return ComponentHealth(status="down", detail=f"{type(exc).__name__}: {exc}"[:300])
    return ComponentHealth(status="up")


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(state: StateDep) -> JSONResponse:
    def db() -> None:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))

    def broker() -> None:
        with state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    components = {"db": _check(db), "broker": _check(broker), "storage": _check(state.store.ping)}
    ok = all(c.status == "up" for c in components.values())
    body = Health(status="up" if ok else "degraded", components=components)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

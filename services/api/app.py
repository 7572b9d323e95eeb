"""The FastAPI gateway: ``create_app(settings)``.

Engines, the store and the Celery app are made in the lifespan, never at import.
The lifespan also runs the job reaper in a background thread (sends jobs whose
dispatch a crash interrupted, re-sends jobs whose worker died).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.api.deps import AppState
from services.api.docs import install_openapi, mount_offline_docs
from services.api.idempotency import purge_expired
from services.api.problems import install_problem_handlers, problem
from services.api.routers import (
    datasets,
    experiments,
    generators,
    health,
    jobs,
    synthesis,
    webhooks,
)
from services.api.workers import WorkerCensus
from services.webhooks.delivery import sweep as sweep_webhooks
from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.errors import PayloadTooLarge
from shared.jobs import reap
from shared.settings import Settings, get_settings
from shared.storage import make_store
from shared.webhooks import attach_celery

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class BodySizeLimit:
    """Answer 413 for a body over its limit, from Content-Length or while streaming: a
    multipart upload may have ``max_upload_bytes`` (it is spooled to disk), any other
    body (JSON, parsed whole in memory) ``max_json_bytes``."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        max_bytes = self.max_upload_bytes if upload else self.max_json_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            response = problem(
                413,
                "Payload too large",
                f"body of {int(declared):,} bytes is over the limit of {max_bytes:,}",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLarge(f"body is over the limit of {max_bytes:,} bytes")
            return message

        await self.app(scope, counting_receive, send)


class Reaper:
    """Every ``reaper_interval_s`` seconds until stopped: :func:`shared.jobs.reap`, the
    webhook deliveries due and not sent (:func:`services.webhooks.delivery.sweep`), and
    the purge of expired idempotency records."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="job-reaper", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.state.settings.reaper_interval_s):
            try:
                reap(
                    self.state.celery, self.state.sessions, lease_s=self.state.settings.job_lease_s
                )
            except Exception:  # keep reaping after a passing DB or broker outage
                log.exception("job reaper pass failed")
            try:  # webhook retries due now, and sends a crash or outage lost
                sweep_webhooks(self.state.celery, self.state.sessions, self.state.settings)
            except Exception:
                log.exception("webhook sweep failed")
            try:
                with self.state.sessions.begin() as session:
                    purged = purge_expired(session, self.state.settings.idempotency_ttl_s)
                if purged:
                    log.info("purged %d expired idempotency records", purged)
            except Exception:
                log.exception("purging expired idempotency records failed")


def create_app(settings: Settings | None = None, *, run_reaper: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        celery = create_celery_app(settings)
        sessions = make_session_factory(engine)
        attach_celery(sessions, celery)  # job events recorded here are sent through it
        state = AppState(
            settings=settings,
            sessions=sessions,
            store=make_store(settings),
            celery=celery,
            workers=WorkerCensus(
                celery, timeout_s=settings.health_worker_timeout_s, cache_s=settings.health_cache_s
            ),
        )
        app.state.tailsynth = state
        reaper = Reaper(state)
        if run_reaper:
            reaper.thread.start()
        try:
            yield
        finally:
            reaper.stop.set()
            engine.dispose()

    app = FastAPI(
        title="tailsynth",
        version="1",
        summary="Fill the long tail of medical image datasets with curated synthetic images.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own pages load their assets from a CDN: services.api.docs
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_bytes=settings.max_json_body_bytes,
    )
    for module in (health, datasets, jobs, generators, synthesis, experiments, webhooks):
        app.include_router(module.router)
    mount_offline_docs(app)
    install_openapi(app)
    return app

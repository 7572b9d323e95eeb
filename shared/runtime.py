"""Per-process resources of a worker: settings, DB engine, storage, Celery app.

Made once, on first use in the process (never at import), and reused by every task.
Heavy models are cached the same way by each service's own code.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.celery_app import create_celery_app
from shared.db import make_engine, make_session_factory
from shared.settings import Settings, get_settings
from shared.storage import ObjectStore, make_store


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def store(self) -> ObjectStore:
        return make_store(self.settings)

    @cached_property
    def celery(self) -> Celery:
        return create_celery_app(self.settings)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime

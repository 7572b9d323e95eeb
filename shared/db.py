"""SQLAlchemy engine and session factory.

Transactions live at the edge: a request or a task opens one session, commits once,
and helpers never commit (STYLE.md). Engines are made by the lifespan of the API or
by the worker at start-up, never at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import NotFound
from shared.settings import Settings

Row = TypeVar("Row")


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Several local processes (API, workers) share the file: wait for locks, use WAL.
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # hide_parameters: a database error names its statement but not the values bound to
    # it, which are users' data (image paths, patient ids) and would reach the logs.
    # connect_timeout: a server that stops answering fails a new connection in seconds
    # (the API answers 503, a task backs off) instead of hanging it without end.
    connect_args = (
        {"connect_timeout": settings.database_connect_timeout_s}
        if url.startswith("postgresql")
        else {}
    )
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        hide_parameters=True,
        connect_args=connect_args,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_owned(
    session: Session,
    model: type[Row],
    row_id: uuid.UUID,
    tenant_id: uuid.UUID | None,
    what: str,
    **extra: Any,
) -> Row:
    """The ``model`` row ``row_id`` if it belongs to ``tenant_id`` (any tenant when None).

    Another tenant's id answers exactly like an unknown one, so ids leak nothing.
    ``extra`` (e.g. ``field="dataset_id"``) goes into the problem+json answer.
    """
    row = session.get(model, row_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):  # type: ignore[attr-defined]
        raise NotFound(f"{what} {row_id} not found", **extra)
    return row

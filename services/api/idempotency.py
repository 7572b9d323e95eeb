"""``Idempotency-Key`` on POST: the same key and body get the same answer and one job.

The answer is stored in the same transaction as the rows it describes, so a replay
never points at something that was rolled back. The same key with a different body
answers 422: the client has a bug, and silently doing either thing would hide it.

Two requests racing with one key both do their work; the unique (tenant, key) index
lets one commit, and the other rolls back and replays the winner's answer
(services/api/routers/_submit.py). A record expires ``ttl_s`` after it was written
(``Settings.idempotency_ttl_s``, 24 h by default): an expired key is free again, and
the API's reaper deletes expired records (:func:`purge_expired`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.models import IdempotencyRecord, utcnow

#: How long a record is replayed when the caller names no TTL (the settings' default).
DEFAULT_TTL_S = 24 * 3600.0


def body_hash(*parts: Any) -> str:
    canonical = json.dumps(jsonable_encoder(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        key: str | None,
        method_path: str,
        request_hash: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.session = session
        self.ttl_s = ttl_s
        self.tenant_id = tenant_id
        self.key = key
        self.method_path = method_path
        self.request_hash = request_hash

    def replay(self) -> JSONResponse | None:
        """The stored answer for this key, or None if the key is new (or absent)."""
        if self.key is None:
            return None
        record = self.session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == self.tenant_id, IdempotencyRecord.key == self.key
            )
        )
        if record is None:
            return None
        if _aware(record.created_at) <= utcnow() - timedelta(seconds=self.ttl_s):
            # Expired: the key is free again. Deleted in this transaction, so that the new
            # answer takes its place when the caller commits (and nothing, if it does not).
            # A racing request may have deleted it first (this one waits for its commit,
            # then matches 0 rows): nothing to do then, and no stale-row warning.
            self.session.execute(
                delete(IdempotencyRecord)
                .where(IdempotencyRecord.id == record.id)
                .execution_options(synchronize_session=False)
            )
            self.session.expunge(record)
            return None
        if record.request_hash != self.request_hash or record.method_path != self.method_path:
            raise InvalidInput(
                "Idempotency-Key was already used with a different request body",
                field="Idempotency-Key",
            )
        return JSONResponse(record.response, status_code=record.status_code)

    def record(self, status_code: int, response: Any) -> JSONResponse:
        """Remember the answer (committed with the caller's transaction) and return it."""
        body = jsonable_encoder(response)
        if self.key is not None:
            self.session.add(
                IdempotencyRecord(
                    tenant_id=self.tenant_id,
                    key=self.key,
                    method_path=self.method_path,
                    request_hash=self.request_hash,
                    status_code=status_code,
                    response=body,
                )
            )
        return JSONResponse(body, status_code=status_code)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def purge_expired(session: Session, ttl_s: float) -> int:
    """Delete the records older than ``ttl_s`` seconds (the caller commits); how many."""
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    result = session.execute(
        delete(IdempotencyRecord)
        .where(IdempotencyRecord.created_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)

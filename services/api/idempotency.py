"""``Idempotency-Key`` on POST: the same key and body get the same answer and one job.

The answer is stored in the same transaction as the rows it describes, so a replay
never points at something that was rolled back. The same key with a different body
answers 422: the client has a bug, and silently doing either thing would hide it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.models import IdempotencyRecord


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
    ) -> None:
        self.session = session
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

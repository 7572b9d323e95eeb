"""API keys: ``ts_<prefix>_<secret>``, stored only as a sha256 hash.

Keys are 256-bit random secrets, so a plain hash is enough (no slow KDF needed: a
guess has no better odds against the hash than against the key itself).

Every request looks its key up in the database, with nothing cached, so a revoked key
is refused from the next request on. A key records when it was last used, written at
most once per interval so that requests do not each write.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import InvalidInput, NotFound
from shared.models import ApiKey, Tenant, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedKey:
    key: str
    key_id: str
    tenant_id: str
    tenant_name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, name: str, tenant_name: str = "default") -> IssuedKey:
    """Create a key (and its tenant if new); the caller commits. The key is shown once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    prefix = secrets.token_hex(4)
    key = f"ts_{prefix}_{secrets.token_urlsafe(32)}"
    record = ApiKey(tenant_id=tenant.id, name=name, prefix=prefix, key_hash=hash_key(key))
    session.add(record)
    session.flush()
    return IssuedKey(
        key=key, key_id=str(record.id), tenant_id=str(tenant.id), tenant_name=tenant.name
    )


def key_for(session: Session, key: str) -> ApiKey | None:
    """The live (not revoked) record of ``key``, read now: never a cached answer."""
    return session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


def record_key_use(factory: sessionmaker[Session], key_id: uuid.UUID, *, interval_s: float) -> None:
    """Set the key's ``last_used_at`` to now unless it was set in the last ``interval_s``
    seconds, in a transaction of its own (the request's may never commit). A failed
    write is logged, never the request's failure."""
    now = utcnow()
    try:
        with factory.begin() as session:
            session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == key_id,
                    or_(
                        ApiKey.last_used_at.is_(None),
                        ApiKey.last_used_at < now - timedelta(seconds=interval_s),
                    ),
                )
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError:
        log.warning("could not record the use of API key %s", key_id, exc_info=True)


def authenticate(
    factory: sessionmaker[Session], key: str, *, interval_s: float
) -> uuid.UUID | None:
    """The tenant of ``key`` if it is live (None if unknown or revoked), read now; records
    the key's use (:func:`record_key_use`).

    Each step takes a connection of its own and gives it back before the next, never
    the request's: a request that held one connection while waiting for a second
    deadlocked the pool under load (20 concurrent requests against 15 connections, each
    holding one and waiting out the pool timeout for another, then a 500)."""
    with factory() as session:
        record = key_for(session, key)
        found = None if record is None else (record.id, record.tenant_id)
    if found is None:
        return None
    record_key_use(factory, found[0], interval_s=interval_s)
    return found[1]


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[ApiKey]:
    """Keys, oldest first, with their tenants loaded (of one tenant if named)."""
    query = select(ApiKey).join(Tenant).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return list(session.scalars(query))


def revoke_api_key(session: Session, key_ref: str) -> tuple[ApiKey, bool]:
    """Revoke the key whose id or prefix (the 8 hex digits after ``ts_``) is ``key_ref``;
    the caller commits. Returns the key and whether it was live until now (revoking a
    revoked key changes nothing).

    Raises:
        NotFound: no key has that id or prefix.
        InvalidInput: several keys share that prefix (name the id instead).
    """
    try:
        condition = ApiKey.id == uuid.UUID(key_ref)
    except ValueError:
        condition = ApiKey.prefix == key_ref.removeprefix("ts_").partition("_")[0]
    matches = list(session.scalars(select(ApiKey).where(condition)))
    if not matches:
        raise NotFound(f"no API key has id or prefix {key_ref!r}")
    if len(matches) > 1:
        raise InvalidInput(
            f"{len(matches)} keys have prefix {key_ref!r}; revoke by id: "
            + ", ".join(str(record.id) for record in matches)
        )
    record = matches[0]
    if record.revoked_at is not None:
        return record, False
    record.revoked_at = utcnow()
    session.flush()
    return record, True


def describe_key(record: ApiKey) -> dict[str, str | None]:
    """What ``tailsynth keys list`` shows of a key (never its hash)."""

    def moment(value: datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value is not None else None

    return {
        "id": str(record.id),
        "prefix": f"ts_{record.prefix}_",
        "name": record.name,
        "tenant": record.tenant.name,
        "created_at": moment(record.created_at),
        "last_used_at": moment(record.last_used_at),
        "revoked_at": moment(record.revoked_at),
    }

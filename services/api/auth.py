"""API keys: ``ts_<prefix>_<secret>``, stored only as a sha256 hash.

Keys are 256-bit random secrets, so a plain hash is enough (no slow KDF needed: a
guess has no better odds against the hash than against the key itself).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey, Tenant


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


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    record = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return record.tenant if record else None

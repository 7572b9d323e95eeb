"""Webhook endpoints of a tenant: create (with a new secret), list, get, delete, and
the attempts of their deliveries. Helpers never commit; the route does."""

from __future__ import annotations

import base64
import secrets
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.webhooks.schemas import WebhookAttemptRead, WebhookCreate, WebhookCreated
from services.webhooks.targets import TargetRefused, resolve_target
from shared.db import get_owned
from shared.errors import InvalidInput
from shared.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A signing secret as the Standard Webhooks scheme writes it: whsec_ + base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_target(request: WebhookCreate, settings: Settings, *, field_prefix: str = "") -> None:
    """422 naming ``<field_prefix>url`` when the URL's host now resolves to an address that
    may not receive webhooks."""
    try:
        resolve_target(request.url, settings)
    except TargetRefused as exc:
        raise InvalidInput(f"{field_prefix}url: {exc}", field=f"{field_prefix}url") from None


def create_endpoint(
    session: Session,
    tenant_id: uuid.UUID,
    request: WebhookCreate,
    settings: Settings,
    *,
    job_id: uuid.UUID | None = None,
    field_prefix: str = "",
) -> WebhookCreated:
    """Add an endpoint (for one job when ``job_id`` is given) after checking where its URL
    points now (422 naming ``<field_prefix>url`` when refused). The answer carries the
    secret, which no later answer shows."""
    check_target(request, settings, field_prefix=field_prefix)
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=request.url,
        events=list(request.events),
        secret=new_secret(),
        job_id=job_id,
    )
    session.add(endpoint)
    session.flush()
    return WebhookCreated.model_validate(endpoint)


def get_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, endpoint_id, tenant_id, "webhook")


def list_endpoints(
    session: Session, tenant_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[WebhookEndpoint], int]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


def delete_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint with its deliveries: nothing more is sent to it."""
    session.delete(get_endpoint(session, tenant_id, endpoint_id))


def list_attempts(
    session: Session, endpoint: WebhookEndpoint, limit: int, offset: int
) -> tuple[list[WebhookAttemptRead], int]:
    """The endpoint's delivery attempts, newest first."""
    query = (
        select(WebhookAttempt, WebhookDelivery)
        .join(WebhookDelivery, WebhookAttempt.delivery_id == WebhookDelivery.id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
    )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(
        query.order_by(WebhookAttempt.created_at.desc(), WebhookAttempt.attempt.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [
        WebhookAttemptRead(
            delivery_id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            job_id=delivery.job_id,
            attempt=attempt.attempt,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
            next_retry_at=attempt.next_retry_at,
            delivery_state=delivery.state,
            created_at=attempt.created_at,
        )
        for attempt, delivery in rows
    ]
    return items, total

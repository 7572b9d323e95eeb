"""``/v1/webhooks``: a tenant's endpoints for job events, and their delivery attempts."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from services.api.deps import LimitDep, OffsetDep, SessionDep, StateDep, TenantDep
from services.api.schemas import Page
from services.webhooks import service
from services.webhooks.schemas import (
    WebhookAttemptRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses={422: {"description": "not http(s), too long, a refused address, unknown event"}},
)
def create_webhook(
    state: StateDep, session: SessionDep, tenant_id: TenantDep, request: WebhookCreate
) -> WebhookCreated:
    """An endpoint for every job of the tenant. The answer's ``secret`` verifies the
    signatures (Standard Webhooks); it is shown only here."""
    created = service.create_endpoint(session, tenant_id, request, state.settings)
    session.commit()
    return created


@router.get("", response_model=Page[WebhookRead])
def list_webhooks(
    session: SessionDep, tenant_id: TenantDep, limit: LimitDep = 50, offset: OffsetDep = 0
) -> Page[WebhookRead]:
    """The tenant's endpoints, those made by a job's POST included, newest first."""
    rows, total = service.list_endpoints(session, tenant_id, limit, offset)
    return Page(
        items=[WebhookRead.model_validate(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{webhook_id}", response_model=WebhookRead, responses={404: {"description": "unknown id"}}
)
def read_webhook(session: SessionDep, tenant_id: TenantDep, webhook_id: uuid.UUID) -> WebhookRead:
    return WebhookRead.model_validate(service.get_endpoint(session, tenant_id, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses={404: {"description": "unknown id"}})
def delete_webhook(session: SessionDep, tenant_id: TenantDep, webhook_id: uuid.UUID) -> Response:
    """Delete the endpoint; its pending deliveries are dropped."""
    service.delete_endpoint(session, tenant_id, webhook_id)
    session.commit()
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[WebhookAttemptRead],
    responses={404: {"description": "unknown id"}},
)
def list_deliveries(
    session: SessionDep,
    tenant_id: TenantDep,
    webhook_id: uuid.UUID,
    limit: LimitDep = 50,
    offset: OffsetDep = 0,
) -> Page[WebhookAttemptRead]:
    """Every delivery attempt to the endpoint, newest first: status code or error,
    duration, attempt number and when the next retry is due."""
    endpoint = service.get_endpoint(session, tenant_id, webhook_id)
    items, total = service.list_attempts(session, endpoint, limit, offset)
    return Page(items=items, total=total, limit=limit, offset=offset)

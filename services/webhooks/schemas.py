"""Request and response schemas of webhooks: the ``webhook`` object of a job-creating
POST, ``/v1/webhooks`` endpoints, and their delivery attempts."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.webhooks.targets import MAX_URL_LENGTH, TargetRefused, check_url_text
from shared.timestamps import Timestamp
from shared.webhooks import EVENT_TYPES

#: The names of shared.webhooks.EVENT_TYPES (a test keeps the two the same).
EventType = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]


class WebhookCreate(BaseModel):
    """Where to send job events, and which. On a job-creating POST (its ``webhook``
    field) it serves that job only; at ``POST /v1/webhooks``, every job of the tenant."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://ci.example.org/hooks", "events": ["job.succeeded", "job.failed"]}
            ]
        },
    )

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="http(s) URL on a public address (private, loopback and link-local "
        "targets are refused unless the server allows them)",
    )
    events: list[EventType] = Field(
        default_factory=lambda: list[EventType](
            ["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]
        ),
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="job.started, job.progress (at most one per interval, on each 10 % "
        "step), job.succeeded (also for a partial job), job.failed, job.canceled",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        try:
            return check_url_text(url)
        except TargetRefused as exc:
            raise ValueError(str(exc)) from None

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    events: list[str]
    job_id: uuid.UUID | None = Field(description="the one job it serves; None: every job")
    created_at: Timestamp


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="whsec_ + base64: verifies the webhook-signature header; shown only now"
    )


class WebhookAttemptRead(BaseModel):
    """One delivery attempt of one event to the endpoint."""

    delivery_id: uuid.UUID
    event_id: str = Field(description="the webhook-id header, the same on every retry")
    event_type: str
    job_id: uuid.UUID
    attempt: int = Field(description="1 for the first try")
    status_code: int | None = Field(description="the receiver's answer; None if none came")
    error: str | None = Field(description="why the attempt failed; None if delivered")
    duration_ms: float
    next_retry_at: Timestamp | None = Field(description="None: delivered or given up")
    delivery_state: str = Field(description="pending, succeeded or failed (gave up)")
    created_at: Timestamp

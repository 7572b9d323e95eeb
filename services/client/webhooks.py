"""Verify a webhook tailsynth sent: the Standard Webhooks scheme, in one call.

    from services.client import verify_webhook, WebhookVerificationError

    event = verify_webhook(request.headers, await request.body(), secret)
    if seen(event["id"]):  # retries carry the same id
        return 200

The signature is ``v1,<base64 HMAC-SHA256 over "webhook-id.webhook-timestamp.body">``
keyed with the endpoint's secret (``whsec_`` + base64, shown once when the endpoint was
made); ``webhook-signature`` may list several, space-separated (secret rotation).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook


class WebhookVerificationError(Exception):
    """The webhook is not authentic or too old/new to trust; the message says which."""


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    tolerance: float = 300,
) -> dict[str, Any]:
    """The event (parsed JSON body) if ``headers`` sign ``body`` with ``secret`` and the
    timestamp is within ``tolerance`` seconds of now; else WebhookVerificationError.

    ``body`` must be the raw bytes received, not re-serialised JSON.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    event_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (event_id and timestamp and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp!r} is not an integer"
        ) from None
    age = time.time() - sent_at
    if age > tolerance:
        raise WebhookVerificationError(f"timestamp is {age:.0f} s old (tolerance {tolerance:g} s)")
    if age < -tolerance:
        raise WebhookVerificationError(
            f"timestamp is {-age:.0f} s in the future (tolerance {tolerance:g} s)"
        )
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        expected = Webhook(secret).sign(event_id, datetime.fromtimestamp(sent_at, UTC), text)
    except Exception as exc:  # a secret that is not whsec_ + base64
        raise WebhookVerificationError(f"unusable secret: {type(exc).__name__}") from None
    if not any(
        hmac.compare_digest(candidate.encode(), expected.encode())
        for candidate in signatures.split()
        if candidate.startswith("v1,")
    ):
        raise WebhookVerificationError("no v1 signature matches the body and secret")
    try:
        event: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WebhookVerificationError(f"signed body is not JSON: {exc}") from None
    return event

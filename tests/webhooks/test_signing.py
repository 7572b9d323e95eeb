"""Signatures (Standard Webhooks) and target checks, without servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import typing
from datetime import UTC, datetime, timedelta

import pytest

from services.client import WebhookVerificationError, verify_webhook
from services.webhooks.delivery import attempt, signature_headers
from services.webhooks.schemas import EventType
from services.webhooks.service import new_secret
from services.webhooks.targets import TargetRefused, check_url_text, resolve_target
from shared.settings import Settings
from shared.webhooks import EVENT_TYPES

BODY = json.dumps({"id": "evt_1", "type": "job.succeeded", "data": {"state": "succeeded"}})


def test_the_signature_is_hmac_sha256_over_id_timestamp_body_with_the_decoded_secret() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "evt_1", BODY)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"evt_1.{headers['webhook-timestamp']}.{BODY}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert secret.startswith("whsec_") and len(key) == 32
    assert verify_webhook(headers, BODY.encode(), secret) == json.loads(BODY)


def test_tampering_or_an_old_timestamp_fails_verification() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "evt_1", BODY)
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(headers, BODY.replace("succeeded", "failed"), secret)
    forged = {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(forged, BODY, secret)
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook({**headers, "webhook-id": "evt_2"}, BODY, secret)
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(headers, BODY, new_secret())
    old = signature_headers(secret, "evt_1", BODY, at=datetime.now(UTC) - timedelta(seconds=400))
    with pytest.raises(WebhookVerificationError, match="old"):
        verify_webhook(old, BODY, secret)
    assert verify_webhook(old, BODY, secret, tolerance=600)["id"] == "evt_1"
    future = signature_headers(secret, "evt_1", BODY, at=datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(future, BODY, secret)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook({"webhook-id": "evt_1"}, BODY, secret)
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook({**headers, "webhook-signature": "garbage"}, BODY, secret)


def test_any_of_several_signatures_may_match_and_header_case_does_not_matter() -> None:
    secret = new_secret()
    headers = signature_headers(secret, "evt_1", BODY)
    rotated = {
        "Webhook-Id": headers["webhook-id"],
        "Webhook-Timestamp": headers["webhook-timestamp"],
        "Webhook-Signature": "v1,b2xk " + headers["webhook-signature"],
    }
    assert verify_webhook(rotated, BODY, secret)["type"] == "job.succeeded"


def test_the_schema_names_exactly_the_events_the_hook_sends() -> None:
    assert set(typing.get_args(EventType)) == set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "not http or https"),
        ("example.com/hook", "not http or https"),
        ("http:///hook", "no host"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://example.com/" + "a" * 2048, "limit is 2048"),
    ],
)
def test_urls_refused_by_their_text(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason):
        check_url_text(url)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://0.0.0.0/hook", "unspecified"),
    ],
)
def test_internal_addresses_are_refused_unless_allowed(url: str, kind: str) -> None:
    with pytest.raises(TargetRefused, match=kind):
        resolve_target(url, Settings(environment="test"))
    assert resolve_target(url, Settings(environment="test", webhook_allow_private=True))


def test_an_allow_list_admits_only_its_networks() -> None:
    settings = Settings(environment="test", webhook_allowed_networks=("127.0.0.0/8",))
    assert str(resolve_target("http://127.0.0.1:9/hook", settings)) == "127.0.0.1"
    with pytest.raises(TargetRefused, match="private"):
        resolve_target("http://10.0.0.1/hook", settings)


def test_a_delivery_to_a_refused_address_is_a_recorded_failure_without_a_connection() -> None:
    result = attempt(
        "http://127.0.0.1:9/hook", new_secret(), "evt_1", BODY, Settings(environment="test")
    )
    assert not result.delivered and result.status_code is None
    assert result.error is not None and result.error.startswith("refused: ")
    assert "loopback" in result.error

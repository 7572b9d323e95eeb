"""``/v1/webhooks`` and the ``webhook`` object of job-creating POSTs, on the embedded
stack (SQLite, no worker) with the default settings: internal targets refused."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

from shared.models import WebhookDelivery
from tests.conftest import ApiHarness

#: A public address written as one: no DNS lookup needed offline.
PUBLIC_URL = "https://93.184.215.14/hooks/tailsynth"


def _field(response_json: dict[str, object]) -> str:
    if "field" in response_json:
        return str(response_json["field"])
    errors = response_json["errors"]
    assert isinstance(errors, list)
    return str(errors[0]["field"])


def test_endpoints_are_per_tenant_and_the_secret_is_shown_once(local_api: ApiHarness) -> None:
    created = local_api.client.post("/v1/webhooks", json={"url": PUBLIC_URL})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and hook["job_id"] is None
    assert hook["events"] == [
        "job.started",
        "job.progress",
        "job.succeeded",
        "job.failed",
        "job.canceled",
    ]
    shown = local_api.client.get(f"/v1/webhooks/{hook['id']}").json()
    assert shown["url"] == PUBLIC_URL and "secret" not in shown
    listed = local_api.client.get("/v1/webhooks").json()
    assert listed["total"] == 1 and [w["id"] for w in listed["items"]] == [hook["id"]]
    assert local_api.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"] == []

    other = local_api.new_tenant_headers()
    for method, path in (
        ("GET", f"/v1/webhooks/{hook['id']}"),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
    ):
        assert local_api.client.request(method, path, headers=other).status_code == 404
    assert local_api.client.get("/v1/webhooks", headers=other).json()["total"] == 0

    assert local_api.client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert local_api.client.get(f"/v1/webhooks/{hook['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://example.com/hook"}, "url", "not http or https"),
        ({"url": "https://example.com/" + "a" * 2100}, "url", "2048"),
        ({"url": "http://10.0.0.7/hook"}, "url", "private"),
        ({"url": "http://127.0.0.1:8080/hook"}, "url", "loopback"),
        ({"url": "http://localhost:8080/hook"}, "url", "loopback"),
        ({"url": "http://169.254.169.254/"}, "url", "link-local"),
        ({"url": PUBLIC_URL, "events": ["job.exploded"]}, "events.0", "job.started"),
        ({"url": PUBLIC_URL, "events": []}, "events", "at least 1"),
        ({"url": PUBLIC_URL, "secret": "mine"}, "secret", "not permitted"),
    ],
)
def test_bad_webhook_input_is_422_naming_the_field(
    local_api: ApiHarness, body: dict[str, object], field: str, says: str
) -> None:
    response = local_api.client.post("/v1/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _field(response.json()) == field
    assert says in response.json()["detail"]


def test_a_job_post_with_a_refused_webhook_creates_nothing(local_api: ApiHarness) -> None:
    response = local_api.client.post(
        "/v1/datasets/demo",
        json={"total": 40, "image_size": 16, "webhook": {"url": "http://192.168.1.5/hook"}},
    )
    assert response.status_code == 422, response.text
    assert _field(response.json()) == "webhook.url" and "private" in response.json()["detail"]
    assert local_api.client.get("/v1/jobs").json()["total"] == 0
    assert local_api.client.get("/v1/webhooks").json()["total"] == 0

    upload = local_api.client.post(
        "/v1/datasets",
        data={"name": "x", "webhook": json.dumps({"url": "ftp://example.com/hook"})},
        files={"file": ("x.zip", io.BytesIO(b"not read"), "application/zip")},
    )
    assert upload.status_code == 422, upload.text
    assert _field(upload.json()) == "webhook.url"
    # A refused address is answered before the archive is read or stored.
    private = local_api.client.post(
        "/v1/datasets",
        data={"name": "x", "webhook": json.dumps({"url": "http://10.9.8.7/hook"})},
        files={"file": ("x.zip", io.BytesIO(b"not a zip"), "application/zip")},
    )
    assert private.status_code == 422, private.text
    assert _field(private.json()) == "webhook.url" and "private" in private.json()["detail"]
    assert local_api.client.get("/v1/jobs").json()["total"] == 0


def test_a_job_webhook_records_the_event_of_a_cancel_in_the_same_transaction(
    local_api: ApiHarness,
) -> None:
    created = local_api.client.post(
        "/v1/datasets/demo",
        json={"total": 40, "image_size": 16, "webhook": {"url": PUBLIC_URL}},
    ).json()
    hook, job_id = created["webhook"], created["job_id"]
    assert hook["job_id"] == job_id and hook["secret"].startswith("whsec_")
    # No worker here: the queued job ends at once, and its event waits for delivery.
    assert local_api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    rows = local_api.rows(select(WebhookDelivery.event_type, WebhookDelivery.body))
    assert [row.event_type for row in rows] == ["job.canceled"]
    event = json.loads(rows[0].body)
    assert event["type"] == "job.canceled" and event["id"].startswith("evt_")
    assert event["data"] == local_api.client.get(f"/v1/jobs/{job_id}").json()

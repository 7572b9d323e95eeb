"""Real answers of the main GETs from a live server write every timestamp one way:
RFC 3339, UTC, six fractional digits, ``Z`` (the server runs on SQLite, whose naive
datetimes used to come out without an offset)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.timestamps import RFC3339_UTC_PATTERN
from tests.docs.conftest import LiveApi


def _timestamps(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``*_at`` value in a JSON document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_at"):
                yield f"{where}.{key}", value
            yield from _timestamps(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _timestamps(value, f"{where}[{i}]")


def test_main_gets_write_rfc3339_utc(live_api: LiveApi) -> None:
    with live_api.client() as client:
        created = client.post(
            "/v1/datasets/demo", json={"name": "ts", "total": 40, "image_size": 16}
        )
        assert created.status_code == 202, created.text
        ids = created.json()
        answers = {
            "POST /v1/datasets/demo": created.json(),
            "GET /v1/datasets": client.get("/v1/datasets").json(),
            "GET /v1/datasets/{id}": client.get(f"/v1/datasets/{ids['dataset_id']}").json(),
            "GET /v1/jobs": client.get("/v1/jobs").json(),
            "GET /v1/jobs/{id}": client.get(f"/v1/jobs/{ids['job_id']}").json(),
        }
    found = {
        f"{name}{where}": value
        for name, answer in answers.items()
        for where, value in _timestamps(answer)
    }
    names = {where.rsplit(".", 1)[-1] for where, value in found.items() if value is not None}
    assert {"created_at", "updated_at"} <= names, found
    now = datetime.now(UTC)
    for where, value in found.items():
        if value is None:  # e.g. a queued job's started_at
            continue
        assert re.fullmatch(RFC3339_UTC_PATTERN, value), f"{where}: {value!r}"
        moment = datetime.fromisoformat(value)
        assert abs(moment - now) < timedelta(minutes=5), f"{where}: {value} is not UTC now"

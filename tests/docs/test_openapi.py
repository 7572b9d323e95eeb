"""The OpenAPI schema documents every operation's errors, every request body's example
and one timestamp format; the examples are valid requests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from services.api import schemas
from services.api.app import create_app
from shared.settings import Settings
from shared.timestamps import RFC3339_UTC_PATTERN, Timestamp, rfc3339

PROBLEM_REF = "#/components/schemas/Problem"


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"))
    return create_app(settings, run_reaper=False).openapi()


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _expected_errors(operation: dict[str, Any]) -> set[int]:
    parameters = operation.get("parameters", [])
    expected = set()
    if any(p["in"] == "header" and p["name"].lower() == "authorization" for p in parameters):
        expected.add(401)
    if any(p["in"] == "path" for p in parameters):
        expected.add(404)
    if "requestBody" in operation:
        expected |= {413, 422}
    if parameters:
        expected.add(422)
    return expected


def test_every_operation_documents_its_errors_as_problems(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["schemas"]["Problem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]
    seen = 0
    for method, path, operation in _operations(openapi):
        responses = operation["responses"]
        if path.startswith("/v1/") and path != "/v1/health":
            # Every v1 route but health needs a key.
            assert "401" in responses, f"{method} {path}"
        for status in _expected_errors(operation):
            assert str(status) in responses, f"{method} {path} lacks {status}"
        for status, response in responses.items():
            if int(status) < 400 or path == "/v1/health":
                continue
            content = response.get("content", {})
            assert set(content) == {"application/problem+json"}, f"{method} {path} {status}"
            assert content["application/problem+json"]["schema"] == {"$ref": PROBLEM_REF}
            assert response["description"] not in ("", "Validation Error")
            seen += 1
    assert seen > 50  # the walk saw the API, not an empty schema
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_routes_keep_their_own_error_words(openapi: dict[str, Any]) -> None:
    synthesis = openapi["paths"]["/v1/synthesis"]["post"]["responses"]
    assert synthesis["404"]["description"] == "unknown dataset or generator"
    assert synthesis["409"]["description"] == "not ready"
    archive = openapi["paths"]["/v1/curated-sets/{curated_set_id}/archive"]["get"]["responses"]
    assert {"206", "409", "413", "416"} <= set(archive)
    # /v1/health answers its own body when a component is down, not a problem.
    health = openapi["paths"]["/v1/health"]["get"]["responses"]["503"]
    assert health["content"]["application/json"]["schema"]["$ref"].endswith("/Health")


def _request_models() -> dict[str, type[BaseModel]]:
    models = {
        name: model
        for name, model in vars(schemas).items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    return models


def test_every_request_body_has_a_valid_example(openapi: dict[str, Any]) -> None:
    models = _request_models()
    bodies = 0
    for method, path, operation in _operations(openapi):
        if method in ("POST", "PUT", "PATCH") and "requestBody" not in operation:
            # A POST without a body takes everything from its path (cancel).
            assert "{" in path, f"{method} {path} has no body"
            continue
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            bodies += 1
            example = media.get("example")
            assert example, f"{method} {path} ({media_type}) has no example"
            ref = media["schema"].get("$ref", "").rsplit("/", 1)[-1]
            if media_type == "application/json" and ref in models:
                models[ref].model_validate(example)  # the example is a valid request
            if media_type == "multipart/form-data":
                required = openapi["components"]["schemas"][ref].get("required", [])
                assert set(required) <= set(example), (path, required)
    assert bodies >= 5


def _date_time_fields(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("format") == "date-time":
            yield where, node
        for key, value in node.items():
            yield from _date_time_fields(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _date_time_fields(value, f"{where}/{i}")


def test_every_timestamp_in_the_schema_is_rfc3339_utc(openapi: dict[str, Any]) -> None:
    fields = list(_date_time_fields(openapi["components"]["schemas"]))
    names = {where.rsplit("/properties/", 1)[-1].split("/")[0] for where, _ in fields}
    assert {"created_at", "updated_at", "started_at", "finished_at"} <= names
    for where, field in fields:
        assert field.get("pattern") == RFC3339_UTC_PATTERN, (
            f"{where}: use shared.timestamps.Timestamp"
        )
        assert all(re.fullmatch(field["pattern"], e) for e in field["examples"]), where


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 11, 26, 23, 59, 1, 123456, tzinfo=UTC), "2026-11-26T23:59:01.123456Z"),
        (datetime(2026, 11, 26, 23, 59, 1, tzinfo=UTC), "2026-11-26T23:59:01.000000Z"),
        # SQLite hands back naive datetimes; tailsynth stores UTC.
        (datetime(2026, 11, 26, 23, 59, 1, 5), "2026-11-26T23:59:01.000005Z"),
        (
            datetime(2026, 11, 27, 0, 59, 1, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-26T23:59:01.000000Z",
        ),
    ],
)
def test_timestamps_serialise_one_way(value: datetime, expected: str) -> None:
    class Row(BaseModel):
        at: Timestamp

    assert rfc3339(value) == expected
    assert Row(at=value).model_dump(mode="json") == {"at": expected}
    assert Row(at=value).model_dump_json() == f'{{"at":"{expected}"}}'
    assert Row.model_validate_json(f'{{"at":"{expected}"}}').at == value.replace(
        tzinfo=value.tzinfo or UTC
    )

"""(9) Every route with an id in its path, called with another tenant's real ids: 404.

The routes come from the OpenAPI schema (``app.openapi()``), so a new route is covered
without a new test; a path parameter this test has no id for fails it, naming the
parameter. Tenant A owns one row of every kind; tenant B asks for each. B's answer
must be a problem+json 404 exactly like the one for an id that exists nowhere, and
carry nothing of A's (names, other ids, the tenant).
"""

from __future__ import annotations

import re
import uuid

import pytest

from services.api.app import create_app
from tests.reliability.conftest import LiveApi, add_owned_rows

pytestmark = [pytest.mark.reliability, pytest.mark.service]

PROBLEM = "application/problem+json"


def _path_routes(api: LiveApi) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameter names) of every route with a path id."""
    schema = create_app(api.settings, run_reaper=False).openapi()
    routes = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            if names:
                routes.append((method.upper(), path, names))
    return routes


def test_every_route_with_a_path_id_answers_404_to_another_tenant(
    queued_only_api: LiveApi,
) -> None:
    api = queued_only_api
    owner_key = api.new_key(tenant=f"owner-{uuid.uuid4().hex[:8]}")
    owner_tenant = api.tenant_id(owner_key)
    marker = f"secret{uuid.uuid4().hex[:8]}"
    owned = add_owned_rows(api, owner_tenant, marker)
    secrets = [marker, str(owner_tenant), *(str(v) for v in owned.values())]
    routes = _path_routes(api)
    covered: list[str] = []
    with api.client(owner_key) as owner, api.client(api.new_key()) as other:
        for method, template, names in routes:
            missing = [n for n in names if n not in owned]
            assert not missing, f"{method} {template}: no other tenant's id for {missing}"
            path = template.format(**{n: owned[n] for n in names})
            nowhere = template.format(**{n: uuid.uuid4() for n in names})
            answer = other.request(method, path)
            baseline = other.request(method, nowhere)
            where = f"{method} {template}"
            assert answer.status_code == 404, (where, answer.status_code, answer.text)
            assert answer.headers["content-type"].startswith(PROBLEM), where
            assert baseline.status_code == 404, (where, baseline.text)
            # Exactly the answer an unknown id gets, once the asked id is set aside.
            asked = [str(owned[n]) for n in names]
            shown = answer.text
            for value in asked:
                shown = shown.replace(value, "<id>")
            unknown = re.sub(
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "<id>",
                baseline.text,
            )
            assert shown == unknown, (where, answer.text, baseline.text)
            leaked = [s for s in secrets if s not in asked and s in answer.text]
            assert not leaked, (where, leaked, answer.text)
            if method == "GET":  # the id is real: its owner reads it
                assert owner.request(method, path).status_code != 404, where
            covered.append(where)
    print(  # noqa: T201
        f"\n(9) {len(covered)} of {len(routes)} routes with a path id called with another "
        f"tenant's ids: all 404 problem+json, nothing leaked ({', '.join(covered)})"
    )
    assert len(covered) == len(routes) > 0


def _body_id_fields(api: LiveApi) -> list[tuple[str, list[str]]]:
    """(path, uuid properties named ``*_id``) of every JSON request body that names ids."""
    schema = create_app(api.settings, run_reaper=False).openapi()
    found = []
    for path, operations in schema["paths"].items():
        body = operations.get("post", {}).get("requestBody", {})
        ref = body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        if ref is None:
            continue
        properties = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        ids = [
            name
            for name, spec in properties.items()
            if name.endswith("_id") and spec.get("format") == "uuid"
        ]
        if ids:
            found.append((path, ids))
    return found


def test_every_id_a_request_body_names_answers_404_to_another_tenant(
    queued_only_api: LiveApi,
) -> None:
    """The tenant's own request, one of whose ids is another tenant's: 404 for that id."""
    api = queued_only_api
    owner_tenant = api.tenant_id(api.new_key(tenant=f"owner-{uuid.uuid4().hex[:8]}"))
    marker = f"secret{uuid.uuid4().hex[:8]}"
    theirs = add_owned_rows(api, owner_tenant, marker)
    key = api.new_key()
    mine = add_owned_rows(api, api.tenant_id(key), f"mine{uuid.uuid4().hex[:8]}")
    secrets = [marker, str(owner_tenant), *(str(v) for v in theirs.values())]
    checked = []
    with api.client(key) as client:
        for path, fields in _body_id_fields(api):
            for field in fields:
                body = {name: str(mine[name]) for name in fields}
                answer = client.post(path, json={**body, field: str(theirs[field])})
                where = f"POST {path} {field}"
                assert answer.status_code == 404, (where, answer.text)
                assert answer.headers["content-type"].startswith(PROBLEM), where
                assert answer.json().get("field") in (None, field), (where, answer.text)
                leaked = [s for s in secrets if s != str(theirs[field]) and s in answer.text]
                assert not leaked, (where, leaked)
                checked.append(where)
    print(  # noqa: T201
        f"\n(9b) {len(checked)} ids in request bodies set to another tenant's: all 404, "
        f"nothing leaked ({', '.join(checked)})"
    )
    assert checked

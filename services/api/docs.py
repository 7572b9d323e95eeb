"""The interactive API docs, offline, and the errors every operation documents.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from the
``fastapi-offline`` package's files, served under ``/docs-assets``, never from a CDN: a
hospital network without internet sees the same page. FastAPI's own ``docs_url`` and
``redoc_url`` (CDN assets) must be off (``FastAPI(docs_url=None, redoc_url=None)``).
Both pages carry a Content-Security-Policy that lets them load from the server only.

:func:`install_openapi` completes the generated schema in one place rather than in
every route: each operation lists the problem+json errors it can answer (401 where it
needs a key, 404 where it names an id, 413 where it takes a body, 422 where it takes any
input, 503 where it reads the database; 409, 416 and other ones where its route
declares them), and each request body carries the example of its schema.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.api.problems import PROBLEM_JSON

ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

#: The body of every error answer (RFC 9457), as ``services.api.problems`` writes it.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error (RFC 9457 problem details). 422 answers add ``errors``, one "
    "entry per field at fault; others may add the field (``field``) or the file they name.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string", "example": "Not found"},
        "status": {"type": "integer", "example": 404},
        "detail": {"type": "string", "example": "dataset 3f0c... not found"},
        "field": {"type": "string", "description": "the input at fault, when one is"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

#: What each status means when a route does not say more.
DEFAULT_DESCRIPTIONS = {
    401: "no key, or an unknown or revoked one (send `Authorization: Bearer <key>`)",
    404: "an unknown id, or another tenant's (they answer alike)",
    409: "conflict: not ready yet, or already finished",
    413: "the body is over the limit (max_upload_bytes for uploads, max_json_body_bytes otherwise)",
    422: "invalid input (`errors` names each field at fault), or an Idempotency-Key "
    "already used with another body",
    503: "the database, broker or object store is unreachable for now; retry after "
    "Retry-After seconds",
}


#: The docs pages may load from the server itself only. Redoc's sidebar asks for its
#: maker's logo on a CDN whatever its options say; this keeps that (and anything else)
#: from leaving the browser. Inline scripts and styles: FastAPI's page templates and
#: Redoc's styled components; blob workers: Redoc's search.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'"
)


def _own_assets_only(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def _static_dir() -> str:
    return str(importlib.resources.files("fastapi_offline") / "static")


def mount_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets from the installed package."""
    app.mount(ASSETS_URL, StaticFiles(directory=_static_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own_assets_only(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own_assets_only(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


def _error_statuses(operation: dict[str, Any]) -> set[int]:
    """The statuses an operation can answer with a problem, read from what it takes: a
    key (the ``authorization`` header of ``get_tenant_id``, looked up in the database),
    an id in its path, a body, any input at all; plus those its route declares."""
    responses = operation.get("responses", {})
    statuses = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
    parameters = operation.get("parameters", [])
    where = {(p.get("in"), p.get("name", "").lower()) for p in parameters}
    if ("header", "authorization") in where:
        statuses |= {401, 503}
    if any(place == "path" for place, _ in where):
        statuses.add(404)
    if "requestBody" in operation:
        statuses.add(413)
    if parameters or "requestBody" in operation:
        statuses.add(422)
    return statuses


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _schema_example(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    ref = schema.get("$ref", "")
    target = components.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
    examples = target.get("examples")
    return examples[0] if isinstance(examples, list) and examples else None


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the Problem schema, each operation's error answers and its body's example."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    components.pop("HTTPValidationError", None)  # 422s are problems, not FastAPI's shape
    components.pop("ValidationError", None)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(operation)):
                declared = responses.get(str(status), {})
                content = declared.get("content", {})
                own_model = any(
                    media.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
                    not in ("", "HTTPValidationError")
                    for media in content.values()
                )
                if own_model:  # e.g. /v1/health's 503 answers its Health body
                    continue
                description = declared.get("description")
                if not description or description == "Validation Error":
                    description = DEFAULT_DESCRIPTIONS.get(status, "error")
                responses[str(status)] = _problem_response(description)
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                if "example" not in media and "examples" not in media:
                    example = _schema_example(media.get("schema", {}), components)
                    if example is not None:
                        media["example"] = example
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) the completed schema, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                ),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""``/docs`` and ``/redoc`` in headless Chromium with every request off loopback aborted:
both render the API's operations from assets the server itself serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.docs.conftest import LiveApi
from tests.trainer.test_report import browser  # noqa: F401  (the report tests' Chromium)

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture
def offline_page(browser: Any) -> Iterator[tuple[Any, dict[str, list[str]]]]:  # noqa: F811
    """A page whose requests leave loopback never: each one that would is aborted and
    recorded, as are failed requests and uncaught page errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen: dict[str, list[str]] = {"requests": [], "outside": [], "failed": [], "errors": []}

    def route(route: Any) -> None:
        url = route.request.url
        if url.startswith("data:") or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            seen["outside"].append(url)
            route.abort()

    page.route("**/*", route)
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} {r.failure}"))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    try:
        yield page, seen
    finally:
        page.close()


def _only_loopback(seen: dict[str, list[str]]) -> None:
    """Nothing reached the network off loopback. Redoc's sidebar always asks for its
    maker's logo on a CDN; the page's Content-Security-Policy blocks that inside the
    browser (it never reaches the route above, let alone the network) and Redoc then
    leaves the logo out."""
    assert seen["outside"] == [], f"requests left loopback: {seen['outside']}"
    assert seen["errors"] == [], f"page errors: {seen['errors']}"
    blocked = [f for f in seen["failed"] if f.endswith(" csp")]  # Chromium: ERR_BLOCKED_BY_CSP
    assert [f for f in seen["failed"] if f not in blocked] == [], seen["failed"]
    hosts = {
        urlsplit(u).hostname
        for u in seen["requests"]
        if not u.startswith("data:") and not any(b.startswith(f"{u} ") for b in blocked)
    }
    assert hosts <= LOOPBACK, hosts


def test_swagger_ui_renders_offline(
    live_api: LiveApi, offline_page: tuple[Any, dict[str, list[str]]]
) -> None:
    from playwright.sync_api import expect

    page, seen = offline_page
    page.goto(f"{live_api.url}/docs", wait_until="load")
    synthesis = page.locator('.opblock-post:has(.opblock-summary-path[data-path="/v1/synthesis"])')
    expect(synthesis).to_have_count(1, timeout=30_000)
    expect(synthesis).to_be_visible()
    # Every operation of the schema is there, and the error answers are listed.
    schema = httpx.get(f"{live_api.url}/openapi.json").json()
    operations = sum(len(ops) for ops in schema["paths"].values())
    expect(page.locator(".opblock")).to_have_count(operations)
    synthesis.locator(".opblock-summary").click()
    responses = synthesis.locator(".responses-table .response-col_status")
    expect(responses.filter(has_text="401")).to_have_count(1)
    expect(responses.filter(has_text="422")).to_have_count(1)
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in seen["requests"])
    _only_loopback(seen)


def test_redoc_renders_offline(
    live_api: LiveApi, offline_page: tuple[Any, dict[str, list[str]]]
) -> None:
    from playwright.sync_api import expect

    page, seen = offline_page
    page.goto(f"{live_api.url}/redoc", wait_until="load")
    operation = page.locator('[data-section-id="operation/create_synthesis_v1_synthesis_post"]')
    expect(operation).to_have_count(1, timeout=30_000)
    expect(operation).to_contain_text("/v1/synthesis")
    expect(operation).to_contain_text("401")
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in seen["requests"])
    _only_loopback(seen)


def test_docs_pages_name_no_outside_host(live_api: LiveApi) -> None:
    """The HTML itself points only at the server's own paths (no CDN, no Google Fonts)."""
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{live_api.url}{page}").text
        assert "http://" not in html and "https://" not in html, page
        assert "/docs-assets/" in html

"""The HTML experiment report: plain checks on the string, then the page in a real browser.

The browser tests open the written file in headless Chromium through Playwright, driving
the system browser at /usr/bin/chromium (``scripts/setup.sh`` installs it with apt; never
``playwright install``). They check every section is there, every plot is an inline SVG
that lays out to a non-zero box, the verdicts are visible, user-supplied names are
escaped, no request leaves the page and the console stays clean.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from services.trainer.report import MAX_SAMPLES_PER_CLASS, render_report
from tests.fixtures.experiments import fake_results

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ALWAYS = ("verdicts", "summary-table", "recall-by-arm", "gain-vs-size", "confusion", "curves",
          "comparisons")  # fmt: skip
PLOTS = ("recall-by-arm", "gain-vs-size", "confusion", "curves")
EVIL = '<script>alert("x")</script>'


def _png(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _samples(class_names: tuple[str, ...], per_class: int = 3) -> dict[str, list[bytes]]:
    return {
        c: [_png((40 * i % 256, 90, 160 + 20 * j % 96)) for j in range(per_class)]
        for i, c in enumerate(class_names)
    }


def _text(html: str) -> str:
    """The page's text roughly as a reader sees it: tags dropped, entities kept."""
    return re.sub(r"<[^>]+>", "", html)


# --- plain checks on the HTML string --------------------------------------------------


def test_no_urls_at_all() -> None:
    """Nothing to fetch: not even SVG namespace or metadata URLs end up in the page."""
    html = render_report(fake_results(adaptive=True), _samples(("NV", "MEL", "DF")))
    assert "http://" not in html
    assert "https://" not in html
    assert "<script" not in html.lower()


def test_sections_follow_the_inputs() -> None:
    bare = render_report(fake_results(), None)
    for section in ALWAYS:
        assert f'<section id="{section}">' in bare
    assert 'id="samples"' not in bare and 'id="adaptive"' not in bare
    full = render_report(fake_results(adaptive=True), _samples(("NV", "DF")))
    assert '<section id="samples">' in full and '<section id="adaptive">' in full
    assert render_report(fake_results(), {"NV": []}).count('id="samples"') == 0


def test_sparse_results_still_render() -> None:
    """A run that produced little (no arms yet, a round without counts) renders, not raises."""
    html = render_report({"task": {}, "arms": {}, "verdicts": []})
    for section in ALWAYS:
        assert f'<section id="{section}">' in html
    results = fake_results(adaptive=True)
    results["adaptive"]["rounds"].append({"allocation": {"NV": 3}, "curated_set_id": None})
    assert '<section id="adaptive">' in render_report(results)


def test_summary_cells_and_binary_columns() -> None:
    results = fake_results(("NORMAL", "PNEUMONIA"), binary=True)
    html = render_report(results)
    ba = results["arms"]["curated"]["metrics"]["summary"]["balanced_accuracy"]
    expected = f"{ba['estimate']:.3f} [{ba['low']:.3f}, {ba['high']:.3f}]"
    assert expected in _text(html)
    for label in ("Sensitivity", "Specificity", "Youden"):
        assert label in html
    assert "Sensitivity" not in render_report(fake_results())


def test_user_strings_are_escaped() -> None:
    names = ("NV", "MEL", EVIL, "a$b$c & <i>")
    results = fake_results(names, arms=("ce", "<b>arm</b>"))
    html = render_report(results, _samples(names), title="<title>")
    assert "<script" not in html.lower()
    assert "<b>arm</b>" not in html and "<i>" not in html
    assert html.count("<title>") == 1
    assert "&lt;script&gt;" in html


def test_samples_are_capped_and_figures_closed() -> None:
    plt.close("all")
    html = render_report(fake_results(), _samples(("NV", "DF"), per_class=12))
    assert html.count('src="data:image/png;base64,') == 2 * MAX_SAMPLES_PER_CLASS
    assert plt.get_fignums() == []


# --- the page in a real browser -------------------------------------------------------


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must run the browser tests (bash scripts/setup.sh installs it)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser: Any, path: Path) -> tuple[Any, dict[str, list[str]]]:
    """Open ``path``; every non-local request is aborted and recorded, as are console errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen: dict[str, list[str]] = {"outside": [], "errors": [], "dialogs": []}

    def route(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            seen["outside"].append(url)
            route.abort()

    page.route("**/*", route)
    page.on(
        "request", lambda r: r.url.startswith(("file:", "data:")) or seen["outside"].append(r.url)
    )
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri(), wait_until="load")
    return page, seen


def _check_page(
    page: Any, seen: dict[str, list[str]], results: dict[str, Any], sections: tuple[str, ...]
) -> None:
    from playwright.sync_api import expect

    for section in sections:
        assert page.locator(f"section#{section}").count() == 1, section
    for section in [s for s in sections if s in PLOTS or s == "adaptive"]:
        svgs = page.locator(f"section#{section} svg")
        assert svgs.count() >= 1, section
        for i in range(svgs.count()):
            box = svgs.nth(i).bounding_box()
            assert box and box["width"] > 0 and box["height"] > 0, (section, i, box)
    verdicts = page.locator("#verdicts li")
    assert verdicts.count() == len(results["verdicts"]) > 0
    for i, verdict in enumerate(results["verdicts"]):
        expect(verdicts.nth(i)).to_be_visible()
        expect(verdicts.nth(i)).to_have_text(verdict)
    # The verdicts lead the page, above every table and plot.
    top = page.locator("#verdicts").bounding_box()["y"]
    assert top < page.locator("#summary-table").bounding_box()["y"]
    # Nothing is wider than the window (tables wrap or scroll inside their box).
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert seen["outside"] == []
    assert seen["errors"] == []
    assert seen["dialogs"] == []


def test_multiclass_page(browser: Any, tmp_path: Path) -> None:
    results = fake_results(("NV", "MEL", "BCC", "AKIEC", "DF"))
    results["arms"]["weighted_ce"]["classifier_health"].update(
        ok=False, message="balanced accuracy 0.21 is at chance"
    )
    path = tmp_path / "report.html"
    path.write_text(render_report(results), encoding="utf-8")
    page, seen = _open(browser, path)
    _check_page(page, seen, results, ALWAYS)
    warning = page.locator("#verdicts .warning")
    assert warning.count() == 1
    assert "weighted_ce" in warning.inner_text() and warning.is_visible()
    assert page.locator("section#samples, section#adaptive").count() == 0
    ba = results["arms"]["curated"]["metrics"]["summary"]["balanced_accuracy"]
    cell = f"{ba['estimate']:.3f} [{ba['low']:.3f}, {ba['high']:.3f}]"
    assert cell in page.locator("#summary-table").text_content()
    page.close()


def test_binary_page(browser: Any, tmp_path: Path) -> None:
    results = fake_results(("NORMAL", "PNEUMONIA"), binary=True, seed=1)
    path = tmp_path / "report.html"
    path.write_text(render_report(results), encoding="utf-8")
    page, seen = _open(browser, path)
    _check_page(page, seen, results, ALWAYS)
    header = page.locator("#summary-table th").all_inner_texts()
    assert {"Sensitivity", "Specificity", "Youden's J"} <= set(header)
    page.close()


def test_adaptive_page_with_samples_and_screenshot(browser: Any, tmp_path: Path) -> None:
    names = ("NV", "MEL", "BKL", "DF")
    results = fake_results(names, arms=("ce", "weighted_ce", "curated", "adaptive"), adaptive=True)
    path = tmp_path / "report.html"
    path.write_text(render_report(results, _samples(names, per_class=10)), encoding="utf-8")
    page, seen = _open(browser, path)
    _check_page(page, seen, results, (*ALWAYS, "samples", "adaptive"))
    images = page.locator("#samples img")
    assert images.count() == len(names) * MAX_SAMPLES_PER_CLASS
    assert all(images.nth(i).evaluate("i => i.naturalWidth > 0") for i in range(images.count()))
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_hostile_class_name_page(browser: Any, tmp_path: Path) -> None:
    names = ("NV", "MEL", EVIL)  # the tail class, so the verdicts name it too
    results = fake_results(names)
    path = tmp_path / "report.html"
    path.write_text(render_report(results, _samples(names)), encoding="utf-8")
    page, seen = _open(browser, path)
    _check_page(page, seen, results, (*ALWAYS, "samples"))
    assert page.locator("script").count() == 0
    assert EVIL in page.locator("header").inner_text()
    assert any(EVIL in t for t in page.locator("#samples figcaption").all_inner_texts())
    assert any(EVIL in v for v in page.locator("#verdicts li").all_inner_texts())
    page.close()


def test_the_guards_catch_a_fetch(browser: Any, tmp_path: Path) -> None:
    """The checks above can fail: an external image is caught by the route and by the CSP."""
    html = render_report(fake_results()).replace("</main>", '<img src="https://example.com/x.png">')
    path = tmp_path / "leaky.html"
    path.write_text(html, encoding="utf-8")
    page, seen = _open(browser, path)
    assert seen["outside"] == ["https://example.com/x.png"]
    assert any("Content Security Policy" in e for e in seen["errors"])
    page.close()

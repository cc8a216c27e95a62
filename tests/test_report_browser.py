"""Open the QC pages in headless Chromium: no console error, every image loaded, sorting works.

Uses Playwright's Python package driving the system Chromium (Debian's ``chromium``
package, installed by ``.ci/run``); no browser is downloaded. Skipped with the reason
when either is missing. Screenshots go to ``tmp_path`` (and to
``$GDLESION_SCREENSHOT_DIR`` when set, to refresh the README images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from batch_helpers import fake_study, write_bids
from gdlesion.batch import run_batch
from gdlesion.pipeline import write_study_outputs
from report_helpers import simulated_result

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install 'gdlesion[test]')"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable (apt-get install chromium)"
)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _open(browser, page_path: Path, shot: Path):
    """Load a page from the file system; return (page, console errors, image stats)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    failed: list[str] = []
    page.on("requestfailed", lambda req: failed.append(req.url[:80]))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    stats = page.evaluate(
        "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    page.screenshot(path=str(shot), full_page=False)
    target = os.environ.get("GDLESION_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / shot.name), full_page=False)
    return page, errors + failed, stats


def test_session_page_in_chromium(browser, tmp_path):
    result, pre, post = simulated_result(tmp_path / "raw", post_name="post.nii.gz")
    out = write_study_outputs(result, tmp_path / "out", inputs=(pre, post))
    page, errors, images = _open(browser, out / "report.html", tmp_path / "report_session.png")
    assert errors == []
    n_expected = 5 + result.lesion_count + min(len(result.rejected), 50)  # 5 whole-brain figures
    assert len(images) == n_expected
    assert all(done and w > 0 and h > 0 for done, w, h in images)
    assert page.locator(".lesion").count() == result.lesion_count + len(result.rejected)
    assert (tmp_path / "report_session.png").stat().st_size > 10_000
    page.close()


def test_batch_page_in_chromium(browser, tmp_path):
    write_bids(tmp_path / "in", {"01": {"01": 3, "02": 1}, "02": {"01": 2}})
    run_batch(tmp_path / "in", tmp_path / "out", study_fn=fake_study, workers=1)
    page, errors, images = _open(browser, tmp_path / "out" / "report.html",
                                 tmp_path / "report_batch.png")
    assert errors == []
    assert all(done and w > 0 for done, w, _ in images)
    counts = lambda: page.eval_on_selector_all(  # noqa: E731
        "#sessions tbody tr", "rows => rows.map(r => r.cells[4].textContent.trim())")
    page.click("#sessions th:nth-child(5)")
    assert counts() == ["1", "2", "3"]
    page.click("#sessions th:nth-child(5)")
    assert counts() == ["3", "2", "1"]
    # every session link opens a page that loads cleanly
    links = page.eval_on_selector_all("a.session-link", "as => as.map(a => a.href)")
    assert len(links) == 3
    for n, href in enumerate(links):
        sub, sub_errors, sub_images = _open(browser, Path(sync_url_path(href)),
                                            tmp_path / f"session_{n}.png")
        assert sub_errors == [] and all(done and w > 0 for done, w, _ in sub_images)
        sub.close()
    page.close()


def sync_url_path(href: str) -> str:
    """File system path of a ``file://`` URL."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(href).path)

"""The built leaderboard in a real browser: Debian's chromium, headless, driven by Playwright.

Loads the site from ``file://`` (as a user who downloads it would), sorts, filters, follows
a run link, and checks that no console error or alert dialog appears. Screenshots go to
``tmp_path`` and are copied to ``/tmp/leaderboard_shots/`` for a human to look at.

Never run ``playwright install``: the test uses the system chromium, and skips (with the
reason) only when that browser or the playwright package is missing.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from test_leaderboard import XSS_MODEL, build_fixture_db

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp/leaderboard_shots")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no browser: {CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="no browser driver: the playwright package is not installed "
                              "(pip install playwright; do not run `playwright install`)"),
]


@pytest.fixture
def browser_page(tmp_path):
    """A fresh page that records console errors, page errors and dialogs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.problems = []  # type: ignore[attr-defined]
        page.dialogs = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type in ("error", "warning") and
                page.problems.append(f"console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: page.problems.append(f"failed to load {r.url}"))

        def on_dialog(dialog):
            page.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        try:
            yield page
        finally:
            browser.close()


def column_values(page, table_id: str, col_key: str) -> list[str | None]:
    """``data-sort`` of one column of the visible rows, top to bottom."""
    return page.evaluate(
        """([tableId, colKey]) => {
            const table = document.getElementById(tableId);
            const ths = [...table.tHead.rows[0].cells];
            const i = ths.findIndex(th => th.dataset.col === colKey);
            return [...table.tBodies[0].rows].filter(r => !r.hidden)
                .map(r => r.cells[i].getAttribute("data-sort"));
        }""", [table_id, col_key])


def shoot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


def test_leaderboard_in_a_browser(browser_page, tmp_path):
    from leaderboard.render import build_site

    page = browser_page
    db = build_fixture_db(tmp_path / "sparsebench.duckdb")
    site = tmp_path / "site"
    build_site(db, site)
    page.goto((site / "index.html").as_uri())
    page.wait_for_load_state("load")
    table_id = page.locator("section.board table").first.get_attribute("id")
    table = page.locator(f"#{table_id}")
    ppl = "m:pydoc/ppl@128"

    # Sort: default order is by target; a click on the perplexity header sorts best (lowest)
    # first with the failed run's empty cell last; a second click reverses.
    before = column_values(page, table_id, ppl)
    table.locator(f'th[data-col="{ppl}"] button').click()
    after = column_values(page, table_id, ppl)
    assert after != before
    numbers = [float(v) for v in after if v is not None]
    assert numbers == sorted(numbers) and after[-1] is None and len(after) == len(before)
    assert table.locator(f'th[data-col="{ppl}"]').get_attribute("aria-sort") == "ascending"
    table.locator(f'th[data-col="{ppl}"] button').click()
    desc = [float(v) for v in column_values(page, table_id, ppl) if v is not None]
    assert desc == sorted(numbers, reverse=True)
    table.locator('th[data-col="method"] button').click()
    methods = table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.method)")
    assert methods == sorted(methods)

    # Filter by method: unticking magnitude hides exactly its rows.
    filters = page.locator(f'form[data-filters="{table_id}"]')
    filters.locator('[data-filter="method"] input[value="magnitude"]').uncheck()
    magnitude = table.locator('tbody tr[data-method="magnitude"]')
    assert magnitude.count() == 3
    for i in range(magnitude.count()):
        assert magnitude.nth(i).is_hidden()
    assert table.locator('tbody tr[data-method="wanda"]').first.is_visible()
    assert filters.locator(".count").inner_text() == "7 of 10 rows"
    filters.locator('[data-filter="text"]').fill("2:4")
    visible = table.locator("tbody tr:visible")
    assert visible.evaluate_all("rs => rs.map(r => r.dataset.target)") == ["2:4", "2:4"]
    filters.locator('[data-filter="text"]').fill("")
    filters.locator('[data-filter="method"] input[value="magnitude"]').check()
    filters.locator('[data-filter="failed"]').uncheck()
    assert table.locator('tbody tr[data-status="failed"]').is_hidden()
    filters.locator('[data-filter="failed"]').check()

    # The hostile model name is text, not markup.
    assert page.get_by_text(XSS_MODEL).first.is_visible()
    shoot(page, tmp_path / "leaderboard_index.png")

    # Open a run page through its link; its plots load from file:// too.
    row = table.locator('tbody tr[data-method="sparsegpt"][data-target="0.5"]')
    run_id = row.get_attribute("data-run")
    row.locator(f'a[href="runs/{run_id}.html"]').click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/runs/{run_id}.html")
    assert "sparsegpt" in page.locator("h1").inner_text()
    assert f"--only {run_id}" in page.locator("#reproduce").inner_text()
    images = page.locator("img")
    assert images.count() >= 2  # layers and the calib/loss series
    assert all(images.nth(i).evaluate("i => i.complete && i.naturalWidth > 0")
               for i in range(images.count()))
    shoot(page, tmp_path / "leaderboard_run.png")

    # The model page of the hostile name: Pareto plots, and still no alert.
    page.locator(".crumbs a").nth(1).click()
    page.wait_for_load_state("load")
    page.goto((site / "index.html").as_uri())
    page.get_by_role("link", name=XSS_MODEL).first.click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == XSS_MODEL
    assert page.locator("figure img").count() == 1

    assert page.dialogs == [], f"a dialog fired: {page.dialogs}"
    assert page.problems == []

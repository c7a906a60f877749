"""The built leaderboard in a real browser: Debian's chromium, headless, driven by Playwright.

Loads the site from ``file://`` (as a user who downloads it would), checks that the index fits a
1400 px window without horizontal overflow and that published numbers, the standing (aggregates)
and seed statistics render; sorts, filters (method, suite, published numbers, all columns),
follows a run link and the model page, and checks that no console error or alert dialog appears.
Screenshots of the index, a model page and a run page go to ``tmp_path`` and are copied to
``/tmp/shots/`` for a human to look at. The store holds FABRICATED test values only.

Never run ``playwright install``: the test uses the system chromium, and skips (with the
reason) only when that browser or the playwright package is missing.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from lb_fixtures import REPORTED_FIXTURE, XSS_MODEL, build_fixture_db, build_wide_fixture_db

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp/shots")
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


def overflow(page) -> dict:
    """Horizontal overflow in px: of the document, and of the widest table scroller."""
    return page.evaluate("""() => ({
        page: document.documentElement.scrollWidth - window.innerWidth,
        tables: Math.max(0, ...[...document.querySelectorAll('.scroll')]
            .filter(s => s.offsetParent !== null).map(s => s.scrollWidth - s.clientWidth)),
    })""")


def test_leaderboard_in_a_browser(browser_page, tmp_path):
    from leaderboard.reported import load_reported
    from leaderboard.render import build_site

    page = browser_page
    db = build_fixture_db(tmp_path / "sparsebench.duckdb", seeds=True)
    site = tmp_path / "site"
    build_site(db, site, reported=load_reported() + load_reported(REPORTED_FIXTURE))
    page.goto((site / "index.html").as_uri())
    page.wait_for_load_state("load")

    # At 1400 px the index fits: nothing scrolls sideways (secondary columns are folded).
    assert overflow(page) == {"page": 0, "tables": 0}
    table_id = page.locator("section.board table.lb[data-sortable]").first.get_attribute("id")
    table = page.locator(f"#{table_id}")
    section = page.locator(f"section.board:has(#{table_id})")
    ppl = "m:pydoc/ppl@128"

    # Published numbers beside the reproduced rows; the standing; seed statistics.
    reported = table.locator('tbody tr[data-kind="reported"]')
    assert reported.count() == 4 and reported.first.is_visible()
    assert "reported" in reported.first.inner_text()
    assert table.locator('tbody tr[data-kind="missing"]').first.is_visible()
    standing = section.locator(".standing table tbody tr")
    assert standing.count() == 5 and standing.first.is_visible()
    assert standing.first.locator("td").first.inner_text() == "wanda+owl"
    owl = table.locator('tbody tr[data-kind="run"][data-variant="wanda+owl"]')
    owl_ppl = owl.locator(f"td:nth-child({1 + column_index(page, table_id, ppl)})")
    assert owl_ppl.inner_text() == "50.20 ± 0.28 n=2" and "seed 1: 50.40" in owl_ppl.get_attribute("title")
    assert "best" in owl_ppl.get_attribute("class")
    assert owl.locator("td a").count() == 3  # the model, and one run link per seed
    badge = table.locator('tbody tr[data-variant="random"] .badge').first
    assert badge.inner_text() == "sb-random 0.0.1" and badge.is_visible()

    # Sort: a click on the perplexity header sorts best (lowest) first, empty cells last.
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

    # Filters: a method; the text box; failed rows; a suite; published numbers; all columns.
    filters = page.locator(f'form[data-filters="{table_id}"]')
    total = table.locator("tbody tr").count()
    magnitude = table.locator('tbody tr[data-method="magnitude"]')
    filters.locator('[data-filter="method"] input[value="magnitude"]').uncheck()
    assert all(magnitude.nth(i).is_hidden() for i in range(magnitude.count()))
    assert filters.locator(".count").inner_text() == f"{total - magnitude.count()} of {total} rows"
    filters.locator('[data-filter="method"] input[value="magnitude"]').check()
    filters.locator('[data-filter="text"]').fill("2:4")
    assert set(table.locator("tbody tr:visible").evaluate_all("rs => rs.map(r => r.dataset.target)")) == {"2:4"}
    filters.locator('[data-filter="text"]').fill("")
    filters.locator('[data-filter="failed"]').uncheck()
    assert table.locator('tbody tr[data-status="failed"]').first.is_hidden()
    filters.locator('[data-filter="failed"]').check()
    suites = page.locator("form[data-suite-filter]")
    suites.locator('input[value="demo"]').uncheck()  # rows the seeds suite asked for stay
    assert owl.is_visible() and table.locator('tbody tr[data-variant="magnitude"][data-kind="run"]').first.is_hidden()
    suites.locator('input[value="demo"]').check()
    suites.locator('[data-filter="reported"]').uncheck()
    assert reported.first.is_hidden() and owl.is_visible()
    suites.locator('[data-filter="reported"]').check()
    device = section.locator('th[data-col="device"]')
    assert device.is_hidden()
    filters.locator('[data-filter="columns"]').check()
    assert device.is_visible()
    filters.locator('[data-filter="columns"]').uncheck()

    # The published Llama-2 numbers, each beside its empty reproduced slot (no hub here).
    page.locator("section#published summary", has_text="c4 128×4096").click()
    llama2 = page.locator('section#published tr[data-model="hf:meta-llama/Llama-2-7b-hf"]')
    assert llama2.count() == 20 and llama2.first.is_visible()
    assert [llama2.nth(i).get_attribute("data-kind") for i in (0, 1)] == ["missing", "reported"]
    assert overflow(page) == {"page": 0, "tables": 0}

    # The hostile model name is text, not markup.
    assert page.get_by_text(XSS_MODEL).first.is_visible()
    page.reload()  # the default order and filters, the Llama-2 numbers open: the screenshot
    page.wait_for_load_state("load")
    page.locator("section#published summary", has_text="c4 128×4096").click()
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, tmp_path / "index.png")

    # Open a run page through its link; its plots load from file:// too.
    row = table.locator('tbody tr[data-kind="run"][data-variant="sparsegpt"][data-target="0.5"]')
    run_id = row.get_attribute("data-run")
    row.locator(f'a[href="runs/{run_id}.html"]').click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/runs/{run_id}.html")
    assert page.locator("h1").inner_text().startswith("sparsegpt · 50 % · seed 0")
    assert f"--only {run_id[:12]}" in page.locator("#reproduce").inner_text()
    images = page.locator("img")
    assert images.count() >= 2  # layers and the calib/loss series
    assert all(images.nth(i).evaluate("i => i.complete && i.naturalWidth > 0") for i in range(images.count()))
    assert overflow(page)["page"] == 0
    shoot(page, tmp_path / "run.png")

    # The model page through the breadcrumb: plots, rows, published numbers.
    page.locator(".crumbs a").nth(1).click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == "zoo:tiny-llama"
    assert page.locator("figure img").count() == 4
    assert page.locator("table.gaps tbody tr").count() == 5
    assert overflow(page)["page"] == 0
    shoot(page, tmp_path / "model.png")

    # The model page of the hostile name, and still no alert.
    page.goto((site / "index.html").as_uri())
    page.get_by_role("link", name=XSS_MODEL).first.click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == XSS_MODEL
    assert page.locator("figure img").count() == 1

    assert page.dialogs == [], f"a dialog fired: {page.dialogs}"
    assert page.problems == []


def column_index(page, table_id: str, col_key: str) -> int:
    return page.evaluate(
        """([tableId, colKey]) => [...document.getElementById(tableId).tHead.rows[0].cells]
            .findIndex(th => th.dataset.col === colKey)""", [table_id, col_key])


def test_the_widest_table_fits_1400_px(browser_page, tmp_path):
    """The paper protocol's shape (two perplexity sets, seven tasks, three seeds, a long variant)."""
    from leaderboard.render import build_site

    page = browser_page
    site = tmp_path / "site"
    build_site(build_wide_fixture_db(tmp_path / "sparsebench.duckdb"), site, plots=False, data=False, reported=[])
    page.goto((site / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert overflow(page) == {"page": 0, "tables": 0}
    assert page.locator("section.board table[data-sortable] tbody tr").count() == 2 * 6
    page.locator('[data-filter="columns"]').first.check()  # every column: the table scrolls, the page does not
    assert overflow(page)["page"] == 0
    missing_plots = ("/plots/", "ERR_FILE_NOT_FOUND")  # built without plots
    assert [p for p in page.problems if not any(m in p for m in missing_plots)] == []

"""Stage two of the leaderboard: the view model into a self-contained static site.

Jinja2 with ``autoescape=True`` (every model name, param, error and suite YAML is escaped)
and ``StrictUndefined`` (a typo in a template fails the build instead of rendering blank).
The site needs no server and no network: it works opened from ``file://``. Layout::

    index.html                 one ranking per model family and protocol across suites (suite filter),
                               published numbers beside them, each table's standing and overview plot
    models/<model>.html        metric-vs-sparsity plots, the model's rows, published numbers and gaps
    runs/<run_id>.html         params, suite YAML, layers, series, environment, reproduce
                               (and a redirect page per older run id of the cell)
    plots/*.svg                matplotlib SVGs, linked from the pages
    static/                    style.css, leaderboard.js (the listed assets)
    data/                      results, runs, metrics, layers, series as Parquet and JSON

Output is deterministic (no clock time, no absolute paths, sorted everything; the build date is
``SOURCE_DATE_EPOCH``'s when set), so a golden file can pin ``index.html`` and a rebuild of the
same database on the same day changes no bytes.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from harness.store.index import Store
from leaderboard.build import Table, build_tables, model_href, run_href
from leaderboard.data import Run, load_runs, write_data_dir
from leaderboard.figures import Plot
from leaderboard.pages import ModelPage, RunPage, metric_label, model_pages, overview_plot, run_page
from leaderboard.reported import ReportedRow, load_reported
from leaderboard.rows import entries
from leaderboard.view import model_family

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS = ("style.css", "leaderboard.js")  # copied from leaderboard/static/ into site/static/
SITE_TITLE = "sparsebench leaderboard"
# Written into every site folder. A rebuild replaces the generated subfolders, so it only
# does that where this marker shows the folder is a site: `--out results` must never delete
# the results' own runs/ folder.
MARKER = ".sparsebench-site"
GENERATED = ("models", "runs", "plots", "data", "static")


class SiteError(ValueError):
    """The output folder is not safe to write the site into."""


@dataclass(frozen=True)
class SiteSummary:
    """What a build wrote, for the CLI to report."""

    out: Path
    tables: int
    runs: int
    failed: int
    models: int
    plots: int


def environment() -> jinja2.Environment:
    """The Jinja2 environment: package templates, autoescaping, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,  # every template renders HTML; user strings must never become markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(site_title=SITE_TITLE, model_href=model_href, run_href=run_href, metric_label=metric_label)
    return env


def build_date() -> str:
    """Today (UTC), or the day of ``SOURCE_DATE_EPOCH`` (reproducible builds) when it is set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch and epoch.isdigit() else datetime.now(timezone.utc)
    return when.date().isoformat()


def render_index(tables: list[Table], runs: list[Run], env: jinja2.Environment | None = None, *,
                 date: str | None = None, reported: Sequence[ReportedRow] = ()) -> str:
    """The HTML of ``index.html``."""
    env = env or environment()
    suites = sorted({s for r in runs for s in r.all_suites})
    counts = {"runs": len(runs), "failed": sum(not r.ok for r in runs), "models": len({r.model for r in runs}),
              "suites": len(suites), "reported": len(reported)}
    return env.get_template("index.html.j2").render(
        root="", tables=[t for t in tables if t.runs], reported_only=[t for t in tables if not t.runs],
        counts=counts, suites=suites, date=date or build_date())


def render_model(page: ModelPage, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    return env.get_template("model.html.j2").render(root="../", page=page)


def render_run(page: RunPage, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    return env.get_template("run.html.j2").render(root="../", page=page)


def render_redirect(old: str, new: str, env: jinja2.Environment | None = None) -> str:
    """A page at an older run id's address that sends the reader to the cell's current page."""
    env = env or environment()
    return env.get_template("redirect.html.j2").render(root="../", old=old, new=new)


def build_site(db: str | Path, out: str | Path, *, plots: bool = True, data: bool = True,
               on_page: Callable[[str], None] | None = None, reported: Sequence[ReportedRow] | None = None,
               date: str | None = None) -> SiteSummary:
    """Build the whole site from a results database.

    Args:
        db: The DuckDB results database.
        out: The site folder; generated files in it are replaced, others left alone.
        plots: Draw the matplotlib SVGs (tests of the HTML alone can skip them).
        data: Write ``data/`` (Parquet and JSON exports).
        on_page: Called with each relative path written, e.g. for progress.
        reported: Published numbers shown beside the runs (default: ``leaderboard/reported``).
        date: The build date shown on the index (default: :func:`build_date`).

    Returns:
        Counts of what was written.
    """
    out = Path(out)
    _check_out(out, Path(db))
    store = Store(db)
    runs = load_runs(store)
    reported = load_reported() if reported is None else list(reported)
    env = environment()
    pool = entries(runs)
    tables = build_tables(runs, reported)
    overviews = []
    for i, t in enumerate(tables):
        rows = [e for e in pool if model_family(e.model) == t.family and e.protocol.key == t.key]
        ov = overview_plot(t, rows, pool) if t.runs else None
        if ov is not None:
            overviews.append(ov)
            tables[i] = replace(t, overview=ov.file)
    models = model_pages(runs, reported)
    run_pages = [run_page(r, runs, pool) for r in runs]

    def write(rel: str, text: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if on_page is not None:
            on_page(rel)

    for sub in GENERATED:  # stale pages of runs no longer in the db go too
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("generated by `harness leaderboard build`; safe to delete\n")
    copy_assets(out / "static")
    write("index.html", render_index(tables, runs, env, date=date, reported=reported))
    for page in models:
        write(page.file, render_model(page, env))
    current = {r.run_id for r in runs}
    for page in run_pages:
        write(page.file, render_run(page, env))
        for old in page.run.aliases:  # old links keep working
            if old not in current and old.isalnum():
                write(run_href(old), render_redirect(old, page.run.run_id, env))
    n_plots = 0
    if plots:
        from leaderboard.plots import draw

        all_plots: list[Plot] = list(overviews)
        all_plots += [p for m in models for s in m.sections for p in s.plots]
        all_plots += [p for rp in run_pages for p in (rp.layer_plot, *rp.series_plots) if p]
        for plot in all_plots:
            write(plot.file, draw(plot))
        n_plots = len(all_plots)
    if data:
        write_data_dir(store, out / "data")
    log.info("leaderboard: %d runs, %d tables, %d plots into %s", len(runs), len(tables),
             n_plots, out)
    return SiteSummary(out, len(tables), len(runs), sum(not r.ok for r in runs), len(models),
                       n_plots)


def _check_out(out: Path, db: Path) -> None:
    """Refuse a non-empty folder that is not a previous site, or one holding the database."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SiteError(f"--out {out} is a file; give a folder for the site")
    if db.resolve().parent == out.resolve():
        raise SiteError(f"--out {out} holds the results database; write the site elsewhere "
                        "(e.g. --out site)")
    if any(out.iterdir()) and not (out / MARKER).exists():
        raise SiteError(f"--out {out} is a non-empty folder that is not a sparsebench site "
                        f"(no {MARKER}); the build replaces its {', '.join(GENERATED)} folders, "
                        "so give a new or empty folder")


def copy_assets(dest: Path) -> None:
    """Copy the listed static assets (and only those) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copyfile(PACKAGE_DIR / "static" / name, dest / name)

"""``frugalml report``: the HTML report of a run or a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from frugalml.cli.common import _cfg, app
from frugalml.contracts import SweepRecord
from frugalml.core.console import err
from frugalml.core.errors import ConfigError
from frugalml.core.store import Store
from frugalml.runs.records import list_runs


@app.command("report")
def report_cmd(
    run_id: Optional[str] = typer.Argument(
        None, help="A run id (default: the latest run in the store).", show_default=False
    ),
    sweep: Optional[str] = typer.Option(
        None, "--sweep", help="A sweep's report instead: its id, or 'last'.", show_default=False
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="The HTML file (default: reports/run.html, reports/sweep.html)."
    ),
) -> None:
    """One self-contained HTML report of a run (costs, gate, accuracy, confusion matrix, variants,
    validation, lineage, trend) or of a sweep (frontier, trials, recommendation): charts inlined,
    opens offline. Also uploaded beside the run's (the sweep's) record in the store."""
    from frugalml.runs import report

    cfg = _cfg()
    store = Store.optional(cfg.storage, tolerate_transient=True)
    if sweep is not None:
        from frugalml.decide import sweep as sw

        sweep_id = sw.latest_id() if sweep == "last" else sweep
        if sweep_id is None:
            raise ConfigError("--sweep last: there is no sweep in .frugalml/sweeps/")
        path = report.write_sweep_report(
            SweepRecord.read(sweep_id), cfg.gates, store, out or Path("reports/sweep.html")
        )
    else:
        if store is None:
            raise ConfigError(
                "run reports read the run records in the store: `frugalml storage up` or configure storage.*"
            )
        ids = list_runs(store)
        rid = run_id or (ids[-1] if ids else None)
        if rid is None:
            raise ConfigError("no run recorded yet: `frugalml run` first")
        path = report.write_stored_run_report(store, rid, out or report.RUN_HTML)
    err.print(f"report: {path}")

"""``frugalml estimate`` and ``frugalml costs``: a run priced before it starts, the ledgers after, and
the summary a run ends with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from frugalml.cli.common import _cfg, _store, _usd, app
from frugalml.contracts import STAGES as STAGE_NAMES
from frugalml.contracts import RunRecord, VariantsReport
from frugalml.core.charts import plot_cost_per_run
from frugalml.core.console import err
from frugalml.core.errors import FrugalError
from frugalml.core.store import Store
from frugalml.decide.estimate import Estimate, estimate
from frugalml.runs.records import get_record, list_runs, recent_records


def _history(cfg, last: int = 20) -> list[RunRecord]:
    """The most recent run records (none when no store is configured or it does not answer)."""
    return recent_records(Store.optional(cfg.storage, tolerate_transient=True), last)


def _estimate_table(est: Estimate) -> Table:
    t = Table(title="Estimate for the current params (every stage run)", box=box.SIMPLE_HEAD)
    for col in ("stage", "wall s", "USD", "basis"):
        t.add_column(col, justify="left" if col in ("stage", "basis") else "right")
    for s in est.stages:
        known = s.wall_s is not None
        t.add_row(s.stage, f"{s.wall_s:.1f}" if known else "?", _usd(s.usd) if known else "?", s.basis)
    t.add_row("labeling", "", f"{est.labeling_usd:.2f}", f"{est.new_images} new images")
    t.add_row("total", f"{est.wall_s:.1f}", _usd(est.compute_usd + est.labeling_usd), "")
    return t


def _print_estimate(est: Estimate) -> None:
    err.print(_estimate_table(est))
    for note in est.notes:
        err.print(f"[dim]{note}[/dim]")


def _print_estimate_or_why(cfg, allow_probe: bool = True) -> None:
    try:
        est = estimate(cfg, _history(cfg), allow_probe=allow_probe)
    except FrugalError as exc:
        err.print(f"[dim]estimate unavailable: {exc}[/dim]")
        return
    _print_estimate(est)


@app.command("estimate")
def estimate_cmd(
    set_: list[str] = typer.Option([], "--set", help="Estimate with KEY=VALUE overrides (params.yaml is not changed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_probe: bool = typer.Option(False, "--no-probe", help="History only: do not run the measured probe."),
) -> None:
    """Predicted wall time and USD of each stage before a run: from the run history for the same
    settings, else from a short measured probe on this machine."""
    cfg = _cfg(set_)
    est = estimate(cfg, _history(cfg), allow_probe=not no_probe)
    if as_json:
        print(json.dumps(est.to_json(), indent=2))
        return
    _print_estimate(est)


def print_summary(record: RunRecord) -> None:
    t = Table(title=f"Cost per stage, run {record.run_id}")
    for col in ("stage", "status", "wall s", "CPU s", "peak RSS MB", "labeling USD", "compute+S3 USD", "total USD"):
        t.add_column(col, justify="left" if col in ("stage", "status") else "right")
    for r in record.stages:
        t.add_row(
            f"{r.stage} @{r.pool}" if r.pool else r.stage,  # a stage on a work pool: its pool
            r.status,
            f"{r.wall_s:.1f}",
            f"{r.cpu_s:.1f}",
            f"{r.peak_rss_mb:.0f}",
            f"{r.labeling_usd:.2f}",
            f"{r.usd - r.labeling_usd:.5f}",
            f"{r.usd:.5f}",
        )
    lab = record.labeling_usd
    t.add_row("total", "", "", "", "", f"{lab:.2f}", f"{record.total_usd - lab:.5f}", f"{record.total_usd:.5f}")
    err.print(t)
    for r in record.stages:
        if r.capacity == "spot" or r.interruptions or r.lost_attempts:
            err.print(_capacity_line(r))
    if record.variants:
        err.print(_variants_line(record.variants))
    if record.gate:
        parts = [
            f"{c.name} {c.value:.4f} {c.op} {c.threshold} ({'pass' if c.passed else 'FAIL'})"
            for c in record.gate.checks
        ]
        color = "green" if record.gate.decision == "accept" else "red"
        err.print(f"gate: [bold {color}]{record.gate.decision.upper()}[/bold {color}] - " + "; ".join(parts))
    if record.package:
        p = record.package
        err.print(f"packaged {p.model} {p.version} -> {p.bento_uri}")
    if record.promoted:
        err.print(f"promoted: {record.promoted.alias} -> {record.promoted.version} (promotion.auto)")
    if record.no_change:
        err.print("no change: every stage was up to date")
    if record.status != "succeeded":
        err.print(f"[bold red]run {record.status}[/bold red]: {record.message}")
    err.print(f"run record: {record.record_uri}")


def _variants_line(report: VariantsReport) -> str:
    """Serving's bill per variant (the compress stage's measure), the chosen one marked."""
    parts = [
        f"{v.name} ${v.usd_per_1k:.6f}" + (f" ({v.accuracy_delta * 100:+.2f} pp)" if v.name != "fp32" else "")
        if v.status == "built"
        else f"{v.name} skipped"
        for v in report.variants
    ]
    return f"serving, USD per 1k predictions: {', '.join(parts)}; serving {report.chosen} ({report.why})"


def _capacity_line(r) -> str:
    """A stage's spot bill against on-demand, and what its interruptions cost."""
    on_demand = r.usd if r.on_demand_usd is None else r.on_demand_usd
    share = f" ({r.saving_usd / on_demand:.0%})" if on_demand else ""
    capacity = r.capacity.replace("_", "-")
    line = f"{r.stage}: {capacity} ${r.usd:.5f}, on-demand ${on_demand:.5f}, saved ${r.saving_usd:.5f}{share}"
    if r.interruptions:
        line += (
            f"; {r.interruptions} interruption(s): the stopped attempts cost ${r.interrupted_usd:.5f}; "
            f"{r.lost_s:.1f} s of work paid twice (${r.lost_usd:.5f})"
        )
    if r.lost_attempts:
        line += f"; {r.lost_attempts} attempt(s) lost with their worker (no ledger: not in the bill)"
    return line


@app.command("costs")
def costs(
    run_id: Optional[str] = typer.Option(None, "--run", help="One run's per-stage table."),
    last: int = typer.Option(10, "--last", help="How many recent runs in the trend."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a cost-per-run chart (PNG)."),
) -> None:
    """Per-stage cost of a run, and the cost trend across recent runs (from the run records in S3)."""

    store = _store()
    ids = [run_id] if run_id else list_runs(store)[-last:]
    if not ids:
        err.print("no run records yet: run `frugalml run` first")
        return
    records = [get_record(store, r) for r in ids]
    if plot:
        plot_cost_per_run(records, plot)
        err.print(f"cost-per-run chart written to {plot}")
    if as_json:
        keys = {"run_id", "status", "no_change", "total_usd", "wall_s", "stages", "gate", "finished"}
        print(json.dumps([r.model_dump(mode="json", include=keys, exclude_none=True) for r in records], indent=2))
    elif run_id:
        print_summary(records[0])
    else:
        err.print(_trend_table(records))


def _trend_table(records: list[RunRecord]):
    """Runs as rows, stages as columns: USD per stage, labeling, total, wall, accuracy."""

    t = Table(
        title=f"Cost trend, last {len(records)} runs (USD per stage; - = up to date; other = dvc push + orchestration)",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for col in ("run", "status", *STAGE_NAMES, "other", "labeling", "total USD", "wall s", "accuracy"):
        t.add_column(col, justify="left" if col in ("run", "status") else "right", no_wrap=True)
    for r in records:
        cells = []
        for name in STAGE_NAMES:
            s = r.stage(name)
            cells.append("-" if s is None or s.status == "up to date" else _usd(s.usd))
        other = sum(s.usd for s in r.stages if s.stage not in STAGE_NAMES)
        acc = r.accuracy()
        t.add_row(
            r.run_id,
            "no change" if r.no_change else r.status,
            *cells,
            _usd(other),
            f"{r.labeling_usd:.2f}",
            _usd(r.total_usd),
            f"{r.wall_s:.1f}",
            "" if acc is None else f"{acc:.4f}",
        )
    return t

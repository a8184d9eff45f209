"""``frugalml sweep``, ``frontier`` and ``exps``: the sweep, its frontier and recommendation, its DVC experiments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from frugalml.cli.common import _cfg, app
from frugalml.cli.costs import _history
from frugalml.contracts import CostEntry, SweepRecord
from frugalml.core import config
from frugalml.core.console import err
from frugalml.core.errors import ConfigError, FrugalError, Rejected
from frugalml.core.locks import RUN_LOCK, workspace_lock
from frugalml.core.procs import dvc_env
from frugalml.core.registry import Registry, write_champion
from frugalml.core.store import Store, resolve_settings
from frugalml.data.dvcconf import write_local_config
from frugalml.decide.estimate import estimate


def _one_trial_estimate(cfg, space) -> tuple[float, float, list[str]]:
    """What the cheapest-looking trial (each key's first choice or low end) would cost, and what
    of that is not its train stage (evaluation, DVC's checks and start-ups around the stages)."""
    from frugalml.core.costs import price
    from frugalml.decide.trials import DVC_TRIAL_S

    first = [f"{k}={(v[0] if isinstance(v, list) else v.low)}" for k, v in space.items()]
    trial_cfg = config.validate(config.apply_overrides(config.dump(cfg), first))
    usd = {s.stage: s.usd or 0.0 for s in estimate(trial_cfg, _history(trial_cfg)).stages}
    overhead = usd.get("evaluate", 0.0) + price({"wall_s": DVC_TRIAL_S}, cfg.costs)["total_usd"]
    return usd.get("train", 0.0) + overhead, overhead, first


def _require_git_commit() -> None:
    if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode != 0:
        raise ConfigError("frugalml sweep runs DVC experiments, which need a git commit: `git commit -am 'baseline'`")


@app.command("sweep")
def sweep_cmd(
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE written to params.yaml first (the trials' base)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue a sweep that was stopped: its id, or 'last'.", show_default=False
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for a run or sweep in progress instead of exiting 2."),
) -> None:
    """Search sweep.space for the cheapest model that meets the gates (Optuna, accuracy vs USD;
    each trial a DVC experiment), then print the frontier and the recommendation."""
    _require_git_commit()
    # A sweep rewrites params.yaml and dvc.lock and drives Optuna's study: it takes the workspace
    # lock as a run does, so a second sweep (--resume of this one) or a run cannot clash with it.
    with workspace_lock(
        RUN_LOCK, "frugalml sweep", wait=wait, on_wait=lambda h: err.print(f"waiting for the run in progress ({h})")
    ):
        _sweep_locked(set_, resume)


def _sweep_locked(set_: list[str], resume: str | None) -> None:
    from frugalml.decide import sweep as sw

    if set_:
        config.write_overrides("params.yaml", set_)
    cfg = _cfg()
    space = sw.check_space(cfg)
    sweep_id = (sw.latest_id() if resume == "last" else resume) if resume else sw.new_id()
    if resume and sweep_id is None:
        raise ConfigError("--resume: there is no sweep in .frugalml/sweeps/ to resume")
    if resume:
        SweepRecord.read(sweep_id)  # a known sweep, and an id that is not a path: before anything runs
    write_local_config(cfg, resolve_settings(cfg.storage))  # DVC's remotes (the source, the cache) as a run has them
    store = Store.optional(cfg.storage, tolerate_transient=True)
    if store is not None:
        write_champion(Registry(store, cfg.model.name))  # evaluate compares each trial with production
    # SIGTERM (a scheduler stopping the sweep) ends it like Ctrl-C: the running trial's processes
    # are stopped, finished trials stay recorded, and `--resume` continues.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    err.print("sweep: preparing the data once (dvc repro validate): the trials start from it")
    prep_id = f"{sweep_id}-prep-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    code = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "validate"], env=dvc_env({"FRUGALML_RUN_ID": prep_id})
    ).returncode
    if code != 0:
        from frugalml.contracts import ValidationReport

        report = ValidationReport.read() if ValidationReport.PATH.exists() else None
        if report is not None and not report.success:  # the pipeline ran and rejected the data: exit 3
            raise Rejected(f"the data failed validation ({ValidationReport.PATH}): a sweep needs data that validates")
        raise FrugalError(f"dvc repro validate exited {code}: the data must validate before a sweep")
    one, overhead, first = _one_trial_estimate(cfg, space)
    if not resume and one > cfg.sweep.budget_usd:
        raise ConfigError(
            f"sweep.budget_usd ${cfg.sweep.budget_usd:g} is below one trial's estimate "
            f"(${one:.5f} for {' '.join(first)}); raise it or search a cheaper space"
        )
    prep = _entries_of(prep_id, ("ingest", "validate"))  # the stages DVC ran now (none: nothing changed)
    if prep:
        err.print(f"sweep: data preparation billed to the sweep: {_prep_text(prep)}")
    sweep = sw.Sweep(cfg, sweep_id, set_, resume=bool(resume), overhead_usd=overhead, prep=prep)
    record = sweep.run(lambda line: err.print(line))
    _show_frontier(cfg, record, plot=None, as_json=False)
    _publish_sweep(record)
    from frugalml.runs.report import write_sweep_report

    path = write_sweep_report(
        record, cfg.gates, Store.optional(cfg.storage, tolerate_transient=True), Path("reports/sweep.html")
    )
    err.print(f"report: {path} (in the store: sweeps/{record.id}/report.html)")


def _entries_of(run_id: str, stages: tuple[str, ...]) -> list:
    """The cost entries of ``stages`` written under ``run_id`` (a stage DVC skipped keeps the
    entry of the run that last ran it)."""
    entries = (CostEntry.for_stage(stage) for stage in stages)
    return [e for e in entries if e is not None and e.run_id == run_id]


def _prep_text(entries) -> str:
    compute = sum(e.total_usd - e.labeling_usd for e in entries)
    labels = sum(e.labeling_usd for e in entries)
    names = " and ".join(e.stage for e in entries)
    return f"{names} ${compute:.5f} of compute" + (f", ${labels:.2f} of new labels" if labels else "")


def _publish_sweep(record) -> None:
    """The record as Prefect artifacts, on the server PREFECT_API_URL names (none: nothing to keep them)."""
    if not os.environ.get("PREFECT_API_URL"):
        err.print("[dim]Prefect artifacts: not published (PREFECT_API_URL is not set)[/dim]")
        return
    from flows.sweep import publish_sweep  # lazy: Prefect: ~2 s to import; only a server needs it

    try:
        key = publish_sweep(record.model_dump(mode="json"))
    except Exception as exc:  # the sweep is done and recorded: a server problem must not fail it
        err.print(f"Prefect artifacts: not published ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})")
        return
    err.print(f"Prefect artifacts: {key} (the trials) and {key}-recommendation at {os.environ['PREFECT_API_URL']}")


def _frontier_table(record) -> Table:
    t = Table(
        title=f"Sweep {record.id}: {len(record.trials)} trials, ${record.spent_usd:.5f} of ${record.budget_usd:g}"
        + (f" (data preparation ${record.prep_usd:.5f} of it)" if record.prep_usd else "")
        + (f" (the screen of {len(record.screen)} starts ${record.screen_usd:.5f} of it)" if record.screen else "")
        + (f"; ${record.prep_labeling_usd:.2f} of new labels" if record.prep_labeling_usd else "")
        + (f"; {record.repeats_skipped} repeated settings not run again" if record.repeats_skipped else "")
    )
    for col in ("trial", "settings", "state", "accuracy", "macro-F1", "USD", "p95 ms", "gate", ""):
        t.add_column(col, justify="left" if col in ("settings", "state", "gate", "") else "right")
    for tr in record.trials:
        mark = "recommended" if tr.number == record.recommended else ("front" if tr.number in record.front else "")
        gate = tr.gate.decision if tr.gate else "-"
        if tr.gate and tr.gate.failed:
            gate += f" ({', '.join(tr.gate.failed)})"
        t.add_row(
            str(tr.number + 1),
            " ".join(o.split(".", 1)[-1] for o in tr.overrides),
            tr.state,
            "-" if tr.accuracy is None else f"{tr.accuracy:.4f}",
            "-" if tr.macro_f1 is None else f"{tr.macro_f1:.4f}",
            f"{tr.usd:.5f}",
            "-" if tr.latency_ms_p95 is None else f"{tr.latency_ms_p95:.1f}",
            gate,
            mark,
        )
    return t


def _closest_misses(record) -> str:
    """What came nearest to each gate no trial passed, and what would close the gap."""
    from frugalml.decide.frontier import closest_misses

    misses = closest_misses(record.trials)
    if not misses:
        return ": each gate is passed by some trial, but no trial passes all of them; relax one of gates.*"
    parts = [
        f"gates.{c.name} {c.threshold:g}: closest trial {t.number + 1} at {c.value:.4g}"
        + (f" ({c.note})" if c.note else "")
        for c, t in misses
    ]
    widen = []
    if any(c.op == ">=" for c, _ in misses):  # a quality gate: min_accuracy, min_macro_f1, min_class_recall
        widen.append("more train.epochs, a larger model.image_size, a pretrained backbone: model.pretrained")
    if any(c.op == "<=" for c, _ in misses):  # a price, latency or size gate
        widen.append("a smaller model.arch or model.image_size, fewer train.epochs")
    return "; " + "; ".join(parts) + f". Widen sweep.space ({'; '.join(widen)}) or relax gates.*"


def _show_frontier(cfg, record, plot: Optional[Path], as_json: bool) -> None:
    from frugalml.core.charts import plot_frontier
    from frugalml.decide import sweep as sw

    if as_json:
        print(record.model_dump_json(indent=2, exclude_none=True))
        return
    err.print(_frontier_table(record))
    png = plot or (SweepRecord.path(record.id).parent / "frontier.png")
    plot_frontier(record, png, cfg.gates)
    uri = sw.upload_chart(cfg, record.id, png)
    err.print(f"chart: {png}" + (f" (and {uri})" if uri else ""))
    rec = next((t for t in record.trials if t.number == record.recommended), None)
    if rec is None:
        err.print("[bold red]no trial passes every gate[/bold red]" + _closest_misses(record))
    else:
        err.print(
            f"[bold green]recommended: trial {rec.number + 1}[/bold green] ({rec.experiment}), the cheapest that "
            f"passes every gate: {record.objective} {rec.score(record.objective):.4f} for ${rec.usd:.5f}. "
            f"`frugalml frontier --apply` writes {' '.join(rec.overrides)} to params.yaml"
        )


@app.command("frontier")
def frontier_cmd(
    sweep_id: Optional[str] = typer.Option(None, "--sweep", help="A sweep id (default: the latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep record as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the chart here (PNG)."),
    apply: bool = typer.Option(False, "--apply", help="Write the recommended trial's settings to params.yaml."),
) -> None:
    """The sweep's trials as a table and a chart ($ vs accuracy, the Pareto front, the gates) and
    the recommendation: the cheapest trial that passes every gate."""
    from frugalml.decide import sweep as sw

    cfg = _cfg()
    sweep_id = sweep_id or sw.latest_id()
    if sweep_id is None:
        raise ConfigError("no sweep yet: run `frugalml sweep` first")
    record = SweepRecord.read(sweep_id)
    _show_frontier(cfg, record, plot, as_json)
    if apply:
        rec = next((t for t in record.trials if t.number == record.recommended), None)
        if rec is None:
            raise ConfigError("--apply: no trial passes every gate, so there is nothing to apply")
        config.write_overrides("params.yaml", rec.overrides)
        err.print(f"params.yaml: {' '.join(rec.overrides)} (trial {rec.number + 1}); `frugalml run` trains it")


EXPS_COLUMNS = ["--only-changed", "--drop", ".*/|^Created$|^typ$"]  # deps columns are paths (with a '/')


@app.command("exps", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exps_cmd(ctx: typer.Context) -> None:
    """The experiments as a readable table: `dvc exp show` with the headline metrics, the $ per
    stage and in total, and only the params that differ (no file-hash columns). Extra arguments
    go to `dvc exp show` (e.g. --sort-by accuracy, --csv)."""

    cmd = [sys.executable, "-m", "dvc", "exp", "show", *EXPS_COLUMNS, *ctx.args]
    code = subprocess.run(cmd, env=dvc_env()).returncode
    if code:
        raise typer.Exit(code)

"""The ``frugalml`` command line.

Exit codes: 0 success; 2 usage or configuration error; 3 the pipeline ran and rejected
(validation failed, gate rejected); 1 an unexpected failure. Errors print one readable
message; ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from frugalml.contracts import STAGES as STAGE_NAMES
from frugalml.contracts import CostEntry, RunRecord, SweepRecord, VariantsReport
from frugalml.core import config
from frugalml.core.charts import plot_cost_per_run
from frugalml.core.console import Progress, err, fast_exit
from frugalml.core.embedded import EmbeddedS3
from frugalml.core.errors import ConfigError, DataError, FrugalError, Rejected, StorageError
from frugalml.core.locks import RUN_LOCK, workspace_lock
from frugalml.core.procs import dvc_env
from frugalml.core.registry import Registry, write_champion
from frugalml.core.store import Store, resolve_settings, split_s3_uri
from frugalml.data.builtin import materialize
from frugalml.data.dvcconf import write_local_config
from frugalml.data.sources import is_hidden, iter_folder
from frugalml.decide.estimate import Estimate, estimate
from frugalml.model import weights
from frugalml.runs.records import get_record, list_runs, new_run_id, recent_records
from frugalml.runs.reproduce import reproduce
from frugalml.ship import bento

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Cost-aware MLOps pipeline for image classification."
)
storage_app = typer.Typer(no_args_is_help=True, help="The embedded S3 server (SeaweedFS) and DVC's remote settings.")
data_app = typer.Typer(no_args_is_help=True, help="Labeled image sources.")
runs_app = typer.Typer(no_args_is_help=True, help="Run records in the object store.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained backbone weights and the team mirror in the store.")
labels_app = typer.Typer(no_args_is_help=True, help="What more labels buy, and which labels are wrong.")
app.add_typer(storage_app, name="storage")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(weights_app, name="weights")
app.add_typer(labels_app, name="labels")

_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    _state["debug"] = debug


def _cfg(overrides: list[str] | None = None):
    return config.load(overrides=overrides)


def _store(cfg=None):
    cfg = cfg or _cfg()
    return Store.from_config(cfg.storage)


# -- storage ------------------------------------------------------------------------------
@storage_app.command("up")
def storage_up() -> None:
    """Start the embedded S3 server on 127.0.0.1 (idempotent) and point DVC at it."""

    cfg = _cfg()
    info = EmbeddedS3(".", cfg.storage.bucket).up()
    err.print(f"embedded S3 server running at {info.endpoint_url} (pid {info.pid}), bucket {cfg.storage.bucket}")
    if Path(".dvc").is_dir() and not cfg.storage.endpoint_url:
        write_local_config(cfg, resolve_settings(cfg.storage))
        err.print("DVC remotes 'storage' and 'source' configured in .dvc/config.local")


@storage_app.command("down")
def storage_down() -> None:
    """Stop the embedded S3 server (its data stays under .frugalml/storage)."""

    err.print("stopped" if EmbeddedS3(".").down() else "not running")


@storage_app.command("status")
def storage_status() -> None:
    """Show whether the embedded S3 server runs and answers."""

    cfg = _cfg()
    st = EmbeddedS3(".", cfg.storage.bucket).status()
    print(json.dumps(st, indent=2))
    if not st["running"]:
        raise typer.Exit(1)


@storage_app.command("env")
def storage_env() -> None:
    """Print shell exports for the embedded server, for the AWS CLI: eval "$(frugalml storage env)"."""

    info = EmbeddedS3(".").info()
    if info is None:
        raise StorageError("the embedded S3 server is not running: start it with `frugalml storage up`")
    for k, v in (
        ("AWS_ENDPOINT_URL", info.endpoint_url),
        ("AWS_ACCESS_KEY_ID", info.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", info.secret_access_key),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        print(f"export {k}={shlex.quote(v)}")


@storage_app.command("configure")
def storage_configure() -> None:
    """Write DVC's local remote settings (.dvc/config.local) from params.yaml and the store in use."""

    cfg = _cfg()
    settings = resolve_settings(cfg.storage)
    path = write_local_config(cfg, settings)
    err.print(
        f"wrote {path} (remote 'storage' -> s3://{settings.bucket}/{settings.prefix}dvc, "
        f"endpoint {settings.endpoint_url or 'AWS'})"
    )


# -- data -----------------------------------------------------------------------------------
@data_app.command("upload")
def data_upload(
    source: str = typer.Argument(..., help="builtin:digits, builtin:shapes or a local folder of <class>/<image> files"),
    dest: Optional[str] = typer.Argument(None, help="s3://bucket/prefix (default: data.source)"),
) -> None:
    """Upload labeled images to an S3 prefix (skips objects already there with the same content)."""

    cfg = _cfg()
    dest = dest or cfg.data.source
    if not dest.startswith("s3://"):
        raise ConfigError(f"destination {dest!r} must be an s3://bucket/prefix URI")
    store = _store(cfg)
    root = materialize(source) if source.startswith("builtin:") else Path(source)
    bucket, prefix = split_s3_uri(dest)
    prefix = prefix.rstrip("/") + "/"
    existing = {o["key"]: o["etag"] for o in store.iter_objects(bucket, prefix)}
    entries = [e for e in iter_folder(root) if not is_hidden(e.path) and not e.problem]
    progress = Progress("upload", len(entries), "files")
    sent = 0

    for e in entries:
        key = prefix + e.path
        data = e.read()
        # a single-part object's ETag is the MD5 of its bytes: equal size is not equal content
        if existing.get(key) != hashlib.md5(data, usedforsecurity=False).hexdigest():
            store.write_object(bucket, key, data)
            sent += 1
        progress.update()
    progress.close(f"({sent} uploaded, {len(entries) - sent} already there)")


# -- run --------------------------------------------------------------------------------------


@app.command("run")
def run(
    set_: list[str] = typer.Option([], "--set", help="Override a params.yaml key: KEY=VALUE (written to params.yaml)."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    always_flow: bool = typer.Option(
        False, "--always-flow", help="Start a Prefect flow run even when nothing changed."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="If another run holds this workspace, wait for it instead of exiting with code 2."
    ),
) -> None:
    """Run the training pipeline (Prefect flow over the DVC stages) and print the cost table.

    Without a Prefect server (PREFECT_API_URL unset), the run starts a local one for its
    length; a run over unchanged data and params is recorded as "no change" after one
    `dvc status`, without waiting for it.
    """

    if until and until not in STAGE_NAMES:
        raise ConfigError(f"--until must be one of {', '.join(STAGE_NAMES)}")
    # SIGTERM (a scheduler, a CI timeout) ends the run like Ctrl-C: the exit handlers run, so the
    # local Prefect server this run started is stopped instead of outliving it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # One run per workspace: two runs would interleave params.yaml, DVC's config and the metrics.
    with workspace_lock(
        RUN_LOCK, "frugalml run", wait=wait, on_wait=lambda h: err.print(f"waiting for the run in progress ({h})")
    ):
        _run_locked(set_, until, always_flow)


def _run_locked(set_: list[str], until: str | None, always_flow: bool) -> None:
    if set_:
        config.write_overrides("params.yaml", set_)
    _cfg()  # fail fast on a bad params.yaml, before Prefect starts
    ephemeral = not os.environ.get("PREFECT_API_URL")
    server = None
    if ephemeral:
        # Prefect's API for this run, starting while the checks below run (see flows/local_server.py).
        from flows.local_server import LocalPrefectServer  # lazy: flows import Prefect (~2 s)

        server = LocalPrefectServer(Path(".frugalml") / "prefect-server.log")
        os.environ["PREFECT_API_URL"] = server.api_url  # before Prefect is imported
    from flows.pipeline import run_if_unchanged, training_pipeline  # lazy: flows import Prefect (~2 s)

    run_id = new_run_id()
    record = run_if_unchanged(run_id, set_, until) if ephemeral and not always_flow else None
    if record is None:
        # While a temporary Prefect server starts, there is time for the probe; against a running
        # server the estimate comes from the history alone (no added seconds)
        _print_estimate_or_why(_cfg(), allow_probe=server is not None)
        if server is not None:
            server.wait_ready()
        err.print(f"run {run_id}: starting the pipeline")
        record = training_pipeline(
            run_id=run_id, overrides=set_, until=until, checked_changed=ephemeral and not always_flow
        )
    print_summary(record)
    from frugalml.runs.report import RUN_HTML

    if record.package and record.package.packaged and record.status == "succeeded":
        v = record.package.version
        err.print("what next:")
        err.print(f"  frugalml serve --version {v}          # serve the model it packaged on 127.0.0.1:3000")
        err.print(f"  frugalml promote {v} --to production  # then `frugalml serve` follows production")
        err.print("  frugalml sweep                        # search for the cheapest settings that pass the gates")
    if RUN_HTML.is_file() and record.run_id in RUN_HTML.read_text()[:4000]:
        err.print(f"report: {RUN_HTML} (open it in a browser; in the store: runs/{record.run_id}/report.html)")
    if record.status == "rejected":
        raise typer.Exit(3)
    if record.status == "failed":
        raise typer.Exit(1)


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


def _one_trial_estimate(cfg, space) -> tuple[float, float, list[str]]:
    """What the cheapest-looking trial (each key's first choice or low end) would cost, and what
    of that is not its train stage (evaluation, DVC's checks and start-ups around the stages)."""
    from frugalml.core.costs import price
    from frugalml.decide.sweep import DVC_TRIAL_S

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
    from frugalml.decide.sweep import closest_misses

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


# -- labels -------------------------------------------------------------------------------
@labels_app.command("curve")
def labels_curve(
    as_json: bool = typer.Option(False, "--json", help="Print the curve as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the chart here (default reports/label_curve.png)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Test accuracy on nested subsets of the train labels, the fitted power law, and what 1.5x / 2x /
    4x the labels (or labels.target_accuracy) would buy and cost. Seconds: frozen-backbone features."""
    from frugalml.core.charts import plot_label_curve
    from frugalml.decide import labels  # lazy: torch, scikit-learn, scipy

    cfg, started = _cfg(set_), time.perf_counter()
    result = labels.curve(cfg, labels.labeled_features(cfg), progress=lambda line: err.print(line))
    labels.bill(cfg, result, started)
    result.write()
    png = plot or Path("reports/label_curve.png")
    plot_label_curve(result, png)
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    _print_curve(result, png)


def _print_curve(c, png: Path) -> None:
    t = Table(title=f"More labels, by the fitted curve (backbone {c.backbone})", box=box.SIMPLE_HEAD)
    for col in ("train labels", "test accuracy", "95% band", "extra labels", "their cost"):
        t.add_column(col, justify="right")
    n_now = c.points[-1].n
    t.add_row(f"{n_now} (now)", f"{c.points[-1].accuracy:.4f}", "measured", "-", "-")
    for p in c.projections:
        t.add_row(
            f"{p.n} ({p.multiple:g}x)",
            f"{p.accuracy:.4f}",
            f"{p.low:.4f}-{p.high:.4f}",
            f"{p.extra_labels:,}",
            f"${p.labels_usd:,.2f}",
        )
    err.print(t)
    if c.target_n is None:
        err.print(
            f"target accuracy {c.target_accuracy}: beyond the fitted ceiling ({c.fit['a']:.4f}) for this head: "
            "more labels alone will not reach it (a better backbone or full fine-tuning might)"
        )
    else:
        err.print(
            f"target accuracy {c.target_accuracy}: about {c.target_extra_labels:,} more train labels "
            f"({c.target_n:,} in all), ${c.target_usd:,.2f} at ${c.labeling_usd_per_image:g} per label"
        )
    if c.backtest_error_pp is not None:
        fr = ", ".join(f"{f:g}" for f in c.backtest_fractions)
        err.print(
            f"backtest: fitted on fractions {fr} only, it predicts {c.backtest_predicted:.4f} at 1.0; "
            f"measured {c.backtest_measured:.4f} ({c.backtest_error_pp:+.2f} pp)"
        )
    err.print(f"{c.head}; {c.wall_s:.1f} s, ${c.usd:.6f} of compute; chart: {png}; record: {c.PATH}")


@labels_app.command("audit")
def labels_audit(
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Labels that out-of-sample predictions contradict (k-fold on frozen-backbone features, then
    cleanlab): an HTML page with thumbnails, a CSV of every flagged image, metrics/label_audit.json."""
    from frugalml.contracts import LabelAudit
    from frugalml.decide import labels  # lazy: torch, scikit-learn, cleanlab

    cfg, started = _cfg(set_), time.perf_counter()
    report, issues = labels.audit(cfg, labels.audit_inputs(cfg))
    labels.bill(cfg, report, started)
    labels.write_audit(report, issues)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    t = Table(title=f"Label audit: {report.issues} of {report.images} labels look wrong", box=box.SIMPLE_HEAD)
    for col in ("source file", "split", "given", "suggested", "quality"):
        t.add_column(col)
    for i in report.top[:15]:
        t.add_row(i.source_path, i.split, i.given, i.suggested, f"{i.quality:.4f}")
    err.print(t)
    err.print(
        f"{report.issue_ratio:.1%} flagged (${report.labels_usd_flagged:,.2f} of labels); out-of-sample accuracy "
        f"{report.out_of_sample_accuracy:.4f} ({report.folds}-fold); {report.wall_s:.1f} s, ${report.usd:.6f}; "
        f"report: {LabelAudit.HTML}, every image: {LabelAudit.CSV}"
    )


@labels_app.command("next")
def labels_next(
    budget: int = typer.Option(..., "--budget", help="How many images to label next."),
    as_json: bool = typer.Option(False, "--json", help="Print the batch as JSON."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """The images of labels.unlabeled to label next: the most uncertain for the current head, spread
    out by k-center greedy; a CSV, a Label Studio import file (presigned image URLs) and the price."""
    from frugalml.decide import annotation  # lazy: torch, scikit-learn
    from frugalml.decide.labels import bill

    cfg, started = _cfg(set_), time.perf_counter()
    batch, classes = annotation.next_batch(cfg, budget, progress=lambda line: err.print(line))
    bill(cfg, batch, started)
    annotation.write_next(batch, classes)
    if as_json:
        print(batch.model_dump_json(indent=2))
        return
    t = Table(title=f"Label next: {len(batch.chosen)} of {batch.candidates} new images", box=box.SIMPLE_HEAD)
    for col in ("rank", "source file", batch.uncertainty, "head's guess"):
        t.add_column(col)
    for c in batch.chosen[:20]:
        t.add_row(str(c.rank), c.source_path, f"{c.uncertainty:.4f}", c.predicted)
    err.print(t)
    if len(batch.chosen) < budget:
        err.print(f"only {len(batch.chosen)} new images in labels.unlabeled: all of them are in the batch")
    err.print(
        f"labeling them: ${batch.labels_usd:,.2f} at ${cfg.costs.prices.labeling_usd_per_image:g} per image; "
        f"{batch.wall_s:.1f} s, ${batch.usd:.6f} of compute. Label Studio: import {batch.TASKS} into a project "
        f"with the interface in {batch.CONFIG} (image URLs expire in {batch.url_expiry_s // 3600} h); "
        f"list: {batch.CSV}. Then `frugalml labels import EXPORT.json`."
    )


@labels_app.command("import")
def labels_import(
    export: Path = typer.Argument(..., help="A Label Studio JSON export of `labels next` tasks."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Label Studio's answers become <class>/<file> images in data.source (S3 prefix or folder), with
    the task and annotator kept as provenance; the next run ingests and prices only those. Any
    problem (unknown class, missing image, malformed export): all are listed, nothing is written."""
    from frugalml.decide import annotation  # lazy

    cfg = _cfg(set_)
    annotation.check_destination(cfg)
    record, blobs, problems = annotation.plan_import(cfg, export)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{export}: {len(problems)} problems, nothing imported:\n{shown}{more}")
    annotation.write_import(cfg, record, blobs)
    price = cfg.costs.prices.labeling_usd_per_image
    err.print(
        f"imported {len(record.labels)} labels into {cfg.data.source}"
        + (f" ({record.already_labeled} were labeled already)" if record.already_labeled else "")
        + f"; provenance: .frugalml/labels/imports/{record.id}.json. "
        + (
            f"The next `frugalml run` ingests them and prices them (${len(record.labels) * price:,.2f} at "
            f"${price:g} per label; `frugalml estimate` counts them)"
            if record.labels
            else "Nothing new to ingest."
        )
    )


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


@app.command("schedule")
def schedule(
    cron: str = typer.Option(..., "--cron", help="When to run, as cron: '0 2 * * *' is 02:00 every night."),
    timezone: str = typer.Option("UTC", "--timezone", help="Time zone of the cron expression."),
    name: str = typer.Option("nightly", "--name", help="Deployment name of the training pipeline."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides every scheduled run applies."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop each run after this stage."),
) -> None:
    """Serve the pipeline on a schedule (and the promotion flow on demand) until stopped with Ctrl-C.

    Runs go to the Prefect server at $PREFECT_API_URL (see infra/). Scheduled runs never
    overlap: the deployment's concurrency limit is 1, later runs wait their turn.
    """

    if until and until not in STAGE_NAMES:
        raise ConfigError(f"--until must be one of {', '.join(STAGE_NAMES)}")
    from prefect.client.schemas.schedules import (
        CronSchedule,  # lazy: Prefect: ~2 s to import; only orchestration pays for it
    )

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except Exception as exc:
        why = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise ConfigError(f"--cron {cron!r} / --timezone {timezone!r}: {why}") from None
    config.load(overrides=set_)  # a bad override fails now, not at 02:00
    if not os.environ.get("PREFECT_API_URL"):
        err.print(
            "[yellow]PREFECT_API_URL is not set: the schedule lives in a temporary Prefect server that "
            "stops with this process. Point it at a Prefect server to see runs in its UI.[/yellow]"
        )
        _quiet_ephemeral_prefect()
    from prefect import serve  # lazy: Prefect: ~2 s to import; only orchestration pays for it

    from flows.pipeline import training_pipeline  # lazy: flows import Prefect (~2 s)
    from flows.promote import promotion_flow  # lazy: flows import Prefect (~2 s)

    train = training_pipeline.to_deployment(
        name=name,
        schedule=CronSchedule(cron=cron, timezone=timezone),
        concurrency_limit=1,
        parameters={"overrides": set_, "until": until},
        tags=["frugalml"],
        description=f"frugalml training pipeline, cron {cron!r} ({timezone})",
    )
    promote = promotion_flow.to_deployment(
        name="promote", concurrency_limit=1, tags=["frugalml"], description="Point an alias at a version (or roll back)"
    )
    err.print(
        f"serving frugalml-training/{name} on cron {cron!r} ({timezone}) and frugalml-promotion/promote; Ctrl-C stops"
    )
    serve(train, promote, print_starting_message=False)


def _quiet_ephemeral_prefect() -> None:
    """Without a Prefect server (PREFECT_API_URL unset) Prefect starts a temporary one on SQLite.

    Its internal "database is locked" retries are logged with tracebacks although the run goes
    on; they are not the user's concern, so that server only reports critical errors.
    """

    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "30")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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


# -- runs / models --------------------------------------------------------------------------------
def _usd(v: float) -> str:
    return f"{v:.2f}" if v >= 1 else f"{v:.5f}"


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


@app.command("reproduce")
def reproduce_cmd(
    run_id: str = typer.Argument(..., help="A run id (see `frugalml runs list`)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary worktree."),
) -> None:
    """Re-run a recorded run from its commit, params and dvc.lock, and compare the metrics."""

    differences = reproduce(_store(), run_id, keep=keep)
    if differences:
        err.print(f"[bold red]run {run_id} did not reproduce exactly:[/bold red]")
        for d in differences:
            err.print(f"  - {d}")
        raise typer.Exit(3)
    err.print(f"run {run_id} reproduced: train and evaluation metrics are identical")


@runs_app.command("list")
def runs_list() -> None:
    """List run records."""

    store = _store()
    for rid in list_runs(store):
        r = get_record(store, rid)
        acc = r.accuracy()
        print(
            f"{rid}  {r.status:<9}  ${r.total_usd:.5f}  {'no change' if r.no_change else ''}"
            f"{'' if acc is None else f'{acc:.4f}'}"
        )


@runs_app.command("show")
def runs_show(run_id: str) -> None:
    """Print one run record as JSON."""

    print(get_record(_store(), run_id).model_dump_json(indent=2, exclude_none=True))


@weights_app.command("add")
def weights_add(
    file: Path = typer.Argument(..., help="A weights file you have (.pth or .safetensors)."),
    arch: str = typer.Option(..., "--arch", help="The architecture it is for: resnet18, timm/tf_efficientnet_lite0..."),
) -> None:
    """Put a weights file into the team mirror (weights/<arch>/<file>), checked against the
    pinned sha256 (packaged weights) or the published hash prefix, and the architecture, first."""

    cfg = _cfg()
    uri, digest = weights.add_to_mirror(_store(cfg), arch, file, cfg.model.weights_url)
    err.print(f"added {file} to the mirror: {uri} (sha256 {digest})")


@weights_app.command("fetch")
def weights_fetch(arch: Optional[str] = typer.Option(None, "--arch", help="Default: model.arch.")) -> None:
    """Resolve the ImageNet weights as a training run would (cache, mirror, installed package,
    download) and mirror them: run once where they can be had, and every worker reads them from the store."""

    cfg = _cfg()
    arch = arch or cfg.model.arch
    kind = "torchvision" if cfg.model.pretrained == "torchvision" and arch == cfg.model.arch else "imagenet"
    found = weights.resolve(arch, store=_store(cfg), url_override=cfg.model.weights_url, kind=kind)
    print(json.dumps({**found.lineage(), "path": str(found.path), "mirror_uri": found.mirror_uri}, indent=2))


@weights_app.command("list")
def weights_list() -> None:
    """The weights files in the team mirror, and whether this machine's cache has each."""

    rows = weights.listing(_store())
    if not rows:
        err.print("the mirror holds no weights yet (see `frugalml weights add` / `frugalml weights fetch`)")
    for r in rows:
        print(
            f"{r['arch']:<28} {r['file']:<40} {r['bytes'] / 1e6:8.1f} MB  "
            f"{'cached here' if r['in_local_cache'] else ''}"
        )


@models_app.command("list")
def models_list() -> None:
    """List registered versions of the configured model, with their aliases."""

    cfg = _cfg()
    reg = Registry(_store(cfg), cfg.model.name)
    by_version: dict[str, list[str]] = {}
    for alias, version in reg.aliases().items():
        by_version.setdefault(version, []).append(alias)
    versions = reg.versions()
    if not versions:
        err.print(f"no versions of {cfg.model.name} registered yet")
    for v in versions:
        rec = reg.get(v)
        tags = ",".join(by_version.get(v, []))
        print(
            f"{v}  accuracy {rec['metrics']['accuracy']:.4f}  gate {rec['gate']['decision']:<6}  "
            f"run {rec['run_id']}  {tags}"
        )


@app.command("promote")
def promote(
    version: str = typer.Argument(..., help="A registered version (see `frugalml models list`)."),
    to: str = typer.Option(..., "--to", help="staging or production"),
    force: bool = typer.Option(False, "--force", help="Promote a gate-rejected version."),
    reason: str = typer.Option("", "--reason", help="Why (required with --force; recorded)."),
) -> None:
    """Point an alias at a version (a conditional write: concurrent promotions never lose an update)."""

    cfg = _cfg()
    reg = Registry(_store(cfg), cfg.model.name)
    new = reg.promote(version, to, force=force, reason=reason)
    _track_champion(reg)
    prev = new["history"][-1] if new["history"] else "nothing"
    err.print(f"{cfg.model.name}: {to} -> {version} (was {prev})")


def _track_champion(reg) -> None:
    """In a pipeline workspace, keep models/champion.json (evaluate's DVC dep) in step."""
    if Path("dvc.yaml").exists():
        write_champion(reg)


@app.command("rollback")
def rollback(alias: str = typer.Argument(..., help="staging or production")) -> None:
    """Point an alias back at the version it had before its last change."""

    cfg = _cfg()
    reg = Registry(_store(cfg), cfg.model.name)
    new = reg.rollback(alias)
    _track_champion(reg)
    err.print(f"{cfg.model.name}: {alias} -> {new['version']} ({new['reason']})")


@models_app.command("show")
def models_show(version: str) -> None:
    """Print one version record as JSON."""

    cfg = _cfg()
    print(json.dumps(Registry(_store(cfg), cfg.model.name).get(version), indent=2))


@app.command("serve")
def serve(
    alias: str = typer.Option("production", "--alias", help="staging or production"),
    version: Optional[str] = typer.Option(None, "--version", help="Serve this version instead of an alias."),
    host: Optional[str] = typer.Option(None, "--host", help="Default: serving.host (127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Default: serving.port (3000)."),
    follow: bool = typer.Option(False, "--follow", help="Switch to the alias's new version while serving."),
    poll_s: float = typer.Option(10.0, "--poll-s", help="With --follow: how often to read the alias."),
) -> None:
    """Serve a registered model: resolve the alias, fetch its bento from S3 if needed, run `bentoml serve`."""
    from frugalml.ship.serving import runner  # lazy: the serving modules import BentoML

    if follow and version:
        raise ConfigError("--follow follows an alias; it cannot be combined with --version")
    cfg = _cfg()
    reg = Registry(_store(cfg), cfg.model.name)
    bento.use_workspace_home()
    host = host or cfg.serving.host
    port = port or cfg.serving.port
    if follow:
        code = runner.follow(reg, alias, host, port, poll_s, runner.proxy_body_limit(cfg.serving))
    else:
        code = runner.serve(reg, version or alias, host, port)
    if code not in (0, -2, -15):
        raise typer.Exit(1)


def _is_click_error(exc: Exception) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return "ClickException" in names and hasattr(exc, "show")


def main() -> None:
    try:
        rv = app(standalone_mode=False)
        if "flows.pipeline" in sys.modules and rv in (None, 0):
            fast_exit(0)
        sys.exit(rv if isinstance(rv, int) else 0)
    except FrugalError as exc:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        if "flows.pipeline" in sys.modules:
            fast_exit(exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        if _is_click_error(exc):  # typer vendors its own click: match by class, not by module
            exc.show()  # the usage line and the message, like any command line tool
            sys.exit(exc.exit_code if isinstance(getattr(exc, "exit_code", None), int) else 2)
        if _state["debug"]:
            raise
        err.print(f"[bold red]unexpected error:[/bold red] {exc.__class__.__name__}: {exc} (rerun with --debug)")
        sys.exit(1)


if __name__ == "__main__":
    main()

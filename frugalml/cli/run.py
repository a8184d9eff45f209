"""``frugalml run``: the pipeline, through the Prefect flow or ``dvc repro``, and its summary."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import typer

from frugalml.cli.common import _cfg, app
from frugalml.cli.costs import _print_estimate_or_why, print_summary
from frugalml.contracts import STAGES as STAGE_NAMES
from frugalml.core import config
from frugalml.core.console import err
from frugalml.core.errors import ConfigError
from frugalml.core.locks import RUN_LOCK, workspace_lock
from frugalml.runs.records import new_run_id


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


def _quiet_ephemeral_prefect() -> None:
    """Without a Prefect server (PREFECT_API_URL unset) Prefect starts a temporary one on SQLite.

    Its internal "database is locked" retries are logged with tracebacks although the run goes
    on; they are not the user's concern, so that server only reports critical errors.
    """

    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "30")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

"""``frugalml schedule``: the pipeline on a Prefect schedule."""

from __future__ import annotations

import os
from typing import Optional

import typer

from frugalml.cli.common import app
from frugalml.cli.run import _quiet_ephemeral_prefect
from frugalml.contracts import STAGES as STAGE_NAMES
from frugalml.core import config
from frugalml.core.console import err
from frugalml.core.errors import ConfigError


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

"""``frugalml reproduce``: a recorded run again, from its record."""

from __future__ import annotations

import typer

from frugalml.cli.common import _store, app
from frugalml.core.console import err
from frugalml.runs.reproduce import reproduce


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

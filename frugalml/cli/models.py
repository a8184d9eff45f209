"""``frugalml runs``, ``models``, ``promote`` and ``rollback``: run records and the model registry."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from frugalml.cli.common import _cfg, _store, app
from frugalml.core.console import err
from frugalml.core.registry import Registry, write_champion
from frugalml.runs.records import get_record, list_runs

runs_app = typer.Typer(no_args_is_help=True, help="Run records in the object store.")
app.add_typer(runs_app, name="runs")

models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
app.add_typer(models_app, name="models")


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

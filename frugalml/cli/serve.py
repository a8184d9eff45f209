"""``frugalml serve``: a registered version behind BentoML."""

from __future__ import annotations

from typing import Optional

import typer

from frugalml.cli.common import _cfg, _store, app
from frugalml.core.errors import ConfigError
from frugalml.core.registry import Registry
from frugalml.ship import bento


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

"""``frugalml storage``: the embedded S3 server and DVC's remote settings."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from frugalml.cli.common import _cfg, app
from frugalml.core.console import err
from frugalml.core.embedded import EmbeddedS3
from frugalml.core.errors import StorageError
from frugalml.core.store import resolve_settings
from frugalml.data.dvcconf import write_local_config

storage_app = typer.Typer(no_args_is_help=True, help="The embedded S3 server (SeaweedFS) and DVC's remote settings.")
app.add_typer(storage_app, name="storage")


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

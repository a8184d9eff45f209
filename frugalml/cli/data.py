"""``frugalml data``: labeled image sources."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import typer

from frugalml.cli.common import _cfg, _store, app
from frugalml.core.console import Progress
from frugalml.core.errors import ConfigError
from frugalml.core.store import split_s3_uri
from frugalml.data.builtin import materialize
from frugalml.data.sources import is_hidden, iter_folder

data_app = typer.Typer(no_args_is_help=True, help="Labeled image sources.")
app.add_typer(data_app, name="data")


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

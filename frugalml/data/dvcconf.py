"""Keep DVC's local config in step with params.yaml and the object store.

Two DVC remotes, both defined in the committed ``.dvc/config`` with their default URLs:

* ``storage``: the DVC remote, ``s3://<bucket>/<prefix>dvc``;
* ``source``: ``data.source`` itself, the ingest stage's external dependency
  (``remote://source`` in dvc.yaml), so ``dvc status`` sees new or changed source images.

``.dvc/config.local`` (never committed; DVC ignores it in git) gets the endpoint and, for
the embedded server only, its credentials. Elsewhere DVC reads AWS credentials from the
environment like boto3 does.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from configobj import ConfigObj

from frugalml.core.config import Params
from frugalml.core.errors import ConfigError
from frugalml.core.fsutil import atomic_write_text
from frugalml.core.store import S3Settings
from frugalml.data.builtin import builtin_dir, materialize, name_of
from frugalml.data.sources import describe

LOCAL_CONFIG = Path(".dvc") / "config.local"


def source_url(cfg: Params, root: Path) -> str:
    src = cfg.data.source
    kind = describe(src)
    if kind == "s3":
        return src.rstrip("/")
    if kind == "builtin":
        return str(builtin_dir(name_of(src), root).resolve())
    return str((root / Path(src).expanduser()).resolve())


def write_local_config(cfg: Params, settings: S3Settings, root: str | os.PathLike = ".") -> Path:
    root = Path(root)
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root.resolve()} is not a DVC repository (no .dvc/ folder): run `dvc init` there")
    if describe(cfg.data.source) == "builtin":
        materialize(cfg.data.source, root)
    managed: dict[str, dict[str, str]] = {"core": {"remote": "storage"}}
    storage = {"url": f"s3://{settings.bucket}/{settings.prefix}dvc"}
    s3_opts = {}
    if settings.endpoint_url:
        s3_opts["endpointurl"] = settings.endpoint_url
    if settings.region:
        s3_opts["region"] = settings.region
    if settings.embedded and settings.access_key_id:
        s3_opts.update(access_key_id=settings.access_key_id, secret_access_key=settings.secret_access_key)
    managed['remote "storage"'] = {**storage, **s3_opts}
    url = source_url(cfg, root)
    source = {"url": url}
    if url.startswith("s3://") and cfg.data.endpoint_url:
        source.update(endpointurl=cfg.data.endpoint_url, region=settings.region)
    elif url.startswith("s3://"):
        source.update(s3_opts)
    managed['remote "source"'] = source
    return _merge_local_config(root / LOCAL_CONFIG, managed, embedded=settings.embedded)


# Keys frugalml owns in the sections it manages; anything else a user put there (or in other
# sections: cache settings, other remotes) is kept as written.
MANAGED_KEYS = {
    "core": {"remote"},
    'remote "storage"': {"url", "endpointurl", "region", "access_key_id", "secret_access_key"},
    'remote "source"': {"url", "endpointurl", "region", "access_key_id", "secret_access_key"},
}


def _merge_local_config(path: Path, managed: dict[str, dict[str, str]], embedded: bool) -> Path:
    """Update only frugalml's keys in .dvc/config.local (DVC's own format, read and written
    with configobj as DVC does), atomically, mode 0600 (it may hold the embedded server's keys)."""

    conf = ConfigObj(str(path), encoding="utf-8", write_empty_values=True) if path.exists() else ConfigObj()
    for section, values in managed.items():
        sec = conf.setdefault(section, {})
        for key in MANAGED_KEYS[section]:
            # credentials stay only where frugalml wrote them (the embedded server's); a user's own
            # keys for another endpoint are theirs to keep
            if key in ("access_key_id", "secret_access_key") and not embedded:
                continue
            if key in values:
                sec[key] = values[key]
            elif key in sec:
                del sec[key]
    conf.filename = None
    buf = io.BytesIO()
    conf.write(buf)
    return atomic_write_text(path, buf.getvalue().decode("utf-8"), mode=0o600)


def check_source_remote(cfg: Params, root: str | os.PathLike = ".") -> None:
    """Fail clearly when DVC's ``source`` remote no longer matches ``data.source``."""
    root = Path(root)
    path = root / LOCAL_CONFIG
    want = source_url(cfg, root)
    if not path.exists():
        return
    section, got = None, None
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s
        elif section == "['remote \"source\"']" and s.startswith("url ="):
            got = s.split("=", 1)[1].strip()
    if got is not None and got != want:
        raise ConfigError(
            f"DVC's remote 'source' points at {got} but data.source is {cfg.data.source}: "
            f"run `frugalml storage configure` (frugalml run does it for you)"
        )

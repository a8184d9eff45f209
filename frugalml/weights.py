"""Pretrained backbone weights (``model.pretrained: torchvision``): where they come from, in order.

1. **The local torch hub cache** (``$TORCH_HOME/hub/checkpoints/<file>``), hash prefix checked.
2. **The team mirror** in the object store, ``weights/<arch>/<file>``: sha256 checked (the
   object's recorded digest and torchvision's published prefix), then kept in the hub cache.
3. **torchvision's own download** (``torch.hub.load_state_dict_from_url`` with its hash check and
   progress line) from torchvision's URL or ``model.weights_url``; the file is then uploaded to the
   mirror, so the next worker that starts empty reads it from the store instead of the internet.

When all three fail: one ``ConfigError`` (exit 2) naming the file, the URL, where to put the file
and the mirror key. A file's name carries the first hex digits of its sha256 (torchvision's
convention, ``resnet18-f37072fd.pth``); a file whose bytes disagree is never loaded.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from frugalml.console import info
from frugalml.errors import ConfigError, PreconditionFailed, StorageError
from frugalml.store import file_sha256

HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub.HASH_REGEX
SAFE_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,200}")
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a black-holed network fails instead of hanging


def torchvision_url(arch: str) -> str:
    """The URL torchvision publishes for ``arch``'s default ImageNet weights."""
    import torchvision.models as tvm  # lazy: torchvision: seconds to import (pulls in torch)

    from frugalml.modeling import ARCHS  # lazy: modeling imports torch; `frugalml --help` should not

    if arch not in ARCHS:
        raise ConfigError(f"model.arch {arch!r} is not supported; choose one of {sorted(ARCHS)}")
    return getattr(tvm, ARCHS[arch]).DEFAULT.url


def weights_url(arch: str, override: str | None = None) -> str:
    """``model.weights_url``: None = torchvision's URL; ending in ``/`` = a base where torchvision's
    file name is appended (an internal HTTP mirror); else the URL of the file itself."""
    url = torchvision_url(arch)
    if not override:
        return url
    return override + os.path.basename(url) if override.endswith("/") else override


def file_name(url: str) -> str:
    name = os.path.basename(url.split("?", 1)[0])
    if not SAFE_NAME.fullmatch(name):  # it becomes a file name in the cache and a key in the mirror
        raise ConfigError(f"the weights file name {name!r} (from {url}) is not a plain file name")
    if not HASH_PREFIX.search(name):
        raise ConfigError(
            f"the weights file name {name!r} carries no sha256 prefix (torchvision's "
            "<name>-<hex>.pth convention), so it cannot be checked; rename it accordingly"
        )
    return name


def hash_prefix(name: str) -> str:
    return HASH_PREFIX.search(name).group(1)


def mirror_key(arch: str, name: str) -> str:
    return f"weights/{arch}/{name}"


def hub_checkpoints() -> Path:
    import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | os.PathLike) -> str:
    return file_sha256(path)


@dataclass
class Resolved:
    """Weights found on disk, with where they came from and what fetching them moved."""

    arch: str
    file: str
    path: Path
    sha256: str
    source: str  # cache | mirror | download
    url: str
    mirror_uri: str | None = None
    download_bytes: int = 0  # from the internet (S3 traffic is counted by the store)

    def lineage(self) -> dict:
        return {
            "kind": "torchvision",
            "arch": self.arch,
            "file": self.file,
            "sha256": self.sha256,
            "source": self.source,
            "url": self.url,
        }

    def state_dict(self) -> dict:
        import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

        return torch.load(self.path, map_location="cpu", weights_only=True)


def _matches(path: Path, name: str) -> tuple[bool, str]:
    digest = sha256_of(path)
    return digest.startswith(hash_prefix(name)), digest


def _from_cache(arch: str, name: str, url: str) -> Resolved | None:
    path = hub_checkpoints() / name
    if not path.is_file():
        return None
    ok, digest = _matches(path, name)
    if not ok:  # a torn or tampered file: set aside (kept for inspection), never loaded
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        info(
            f"weights: {path} does not match its hash prefix {hash_prefix(name)} (sha256 {digest[:12]}); "
            f"moved to {aside.name}, looking further"
        )
        return None
    info(f"weights: {name} from the local cache {path} (sha256 {digest[:12]}, prefix checked)")
    return Resolved(arch, name, path, digest, "cache", url)


def _from_mirror(store, arch: str, name: str, url: str) -> tuple[Resolved | None, bool]:
    """(the weights from the mirror or None, whether the mirror holds an object under that key)."""
    key = mirror_key(arch, name)
    if store.head(key) is None:
        return None, False
    dest = hub_checkpoints() / name
    try:
        store.download(key, dest)  # atomic, and checks the sha256 recorded at upload
    except StorageError as exc:
        info(f"weights: the mirror copy {store.uri(key)} is not usable ({exc}); not loaded, looking further")
        return None, True
    ok, digest = _matches(dest, name)
    if not ok:
        dest.unlink(missing_ok=True)
        info(
            f"weights: the mirror copy {store.uri(key)} does not match its hash prefix {hash_prefix(name)} "
            f"(sha256 {digest[:12]}); not loaded, looking further"
        )
        return None, True
    info(
        f"weights: {name} from the team mirror {store.uri(key)} ({dest.stat().st_size / 1e6:.1f} MB, "
        f"sha256 {digest[:12]} checked)"
    )
    return Resolved(arch, name, dest, digest, "mirror", url, mirror_uri=store.uri(key)), True


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(arch: str, name: str, url: str, progress: bool) -> tuple[Resolved | None, str]:
    """torchvision's own download path, unchanged: ``load_state_dict_from_url`` with ``check_hash``."""
    import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

    info(f"weights: downloading {name} from {url}")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.load_state_dict_from_url(
                url,
                model_dir=str(hub_checkpoints()),
                map_location="cpu",
                progress=progress,
                check_hash=True,
                file_name=name,
                weights_only=True,
            )
    except Exception as exc:  # URLError, HTTPError, timeout, hash mismatch (RuntimeError)...
        reason = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
        return None, reason[:300]
    path = hub_checkpoints() / name
    digest = sha256_of(path)
    size = path.stat().st_size
    info(f"weights: downloaded {name} ({size / 1e6:.1f} MB, hash prefix {hash_prefix(name)} checked)")
    return Resolved(arch, name, path, digest, "download", url, download_bytes=size), ""


def mirror_upload(store, arch: str, path: Path, name: str, *, replace: bool = False) -> str | None:
    """Put a verified file in the mirror. Create-only unless ``replace`` (the copy there was found
    corrupt): a copy with other bytes is replaced. Returns the object's URI, None when it failed."""

    key = mirror_key(arch, name)
    try:
        try:
            store.put_file(key, path, if_none_match=not replace)
        except PreconditionFailed:
            head = store.head(key) or {}
            if head.get("Metadata", {}).get("sha256") != sha256_of(path):
                store.put_file(key, path)  # the copy there is not these bytes: replace it
        return store.uri(key)
    except StorageError as exc:
        info(f"weights: warning: could not add {name} to the team mirror ({exc})")
        return None


def resolve(arch: str, *, store=None, url_override: str | None = None, progress: bool = True) -> Resolved:
    """The weights file for ``arch``: local cache, then the mirror, then the download (+ mirror)."""
    url = weights_url(arch, url_override)
    name = file_name(url)
    found = _from_cache(arch, name, url)
    mirror_bad = False
    if found is None and store is not None:
        found, present = _from_mirror(store, arch, name, url)
        mirror_bad = found is None and present  # there, but not usable: replaced after the download
    if found is not None:
        return found
    found, reason = _download(arch, name, url, progress)
    if found is None:
        where = hub_checkpoints() / name
        mirror = (
            store.uri(mirror_key(arch, name)) if store is not None else f"weights/{arch}/{name} (no store configured)"
        )
        raise ConfigError(
            f"model.pretrained=torchvision: the {arch} weights {name} are not in the local cache ({where}) "
            f"nor the team mirror ({mirror}), and the download from {url} failed ({reason}). "
            f"Put the file at {where}, or add it to the mirror with `frugalml weights add FILE --arch {arch}`, "
            f"or set model.weights_url to a reachable copy, or use model.pretrained=none"
        )
    if store is not None:
        found.mirror_uri = mirror_upload(store, arch, found.path, name, replace=mirror_bad)
        if found.mirror_uri:
            info(f"weights: mirrored to {found.mirror_uri}: the next worker reads it from the store")
    return found


def add_to_mirror(store, arch: str, path: Path, url_override: str | None = None) -> tuple[str, str]:
    """``frugalml weights add``: check a file the user has against the published hash prefix and
    the architecture, then put it in the mirror under torchvision's file name. -> (uri, sha256)."""
    import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

    name = file_name(weights_url(arch, url_override))
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    digest = sha256_of(path)
    if not digest.startswith(hash_prefix(name)):
        raise ConfigError(
            f"{path} is not {name}: its sha256 {digest[:16]}... does not start with the published "
            f"prefix {hash_prefix(name)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        from frugalml.modeling import bare_backbone  # lazy: imports torch

        bare_backbone(arch).load_state_dict(state)
    except Exception as exc:
        raise ConfigError(
            f"{path} does not hold {arch} weights ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    uri = mirror_upload(store, arch, path, name)
    if uri is None:
        raise StorageError(f"could not upload {path} to the mirror")
    return uri, digest


def listing(store) -> list[dict]:
    """What the mirror holds, with whether this machine's hub cache has each file."""
    rows = []
    for o in store.list("weights/"):
        parts = o["key"].split("/")
        if len(parts) != 3:
            continue
        rows.append(
            {
                "arch": parts[1],
                "file": parts[2],
                "bytes": o["size"],
                "uri": store.uri(o["key"]),
                "in_local_cache": (hub_checkpoints() / parts[2]).is_file(),
            }
        )
    return rows

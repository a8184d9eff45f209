"""Where labeled images come from: an s3:// prefix, a local folder, an archive, or builtin:digits.

Every source yields ``Entry`` objects: a POSIX path relative to the source root (its first
component is the class, or ``train/``/``val/``/``test/`` then the class) and a way to read the
bytes. Problems found while listing (symlink loops, unsafe archive members, unreadable
folders) are yielded as entries with ``problem`` set, so they land in the ingest report.
"""

from __future__ import annotations

import os
import tarfile
from functools import partial
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from frugalml.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass
class Entry:
    path: str
    size: int
    read: Callable[[], bytes] | None = None
    problem: str | None = None
    detail: str = ""
    stamp: str = ""  # cheap change marker (mtime, CRC, ETag): unchanged files are not read again


def is_hidden(path: str) -> bool:
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in path.split("/"))


def describe(source: str) -> str:
    if source.startswith("s3://"):
        return "s3"
    if source.startswith("builtin:"):
        return "builtin"
    if source.lower().endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return "folder"


# -- built-in -------------------------------------------------------------------------------
def write_builtin_digits(dest: str | os.PathLike) -> Path:
    """scikit-learn's bundled handwritten digits as ``<class>/<name>.png`` (8x8 grayscale)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from frugalml.fsutil import atomic_write_bytes
    from frugalml.images import png_bytes

    dest = Path(dest)
    marker = dest / ".complete"
    if marker.exists():
        return dest
    digits = load_digits()
    for i, (img, target) in enumerate(zip(digits.images, digits.target)):
        arr = np.clip(img * (255.0 / 16.0), 0, 255).astype("uint8")
        atomic_write_bytes(dest / str(target) / f"digit_{i:04d}.png", png_bytes(Image.fromarray(arr, mode="L")))
    marker.write_text("scikit-learn load_digits\n")
    return dest


# -- local folder -----------------------------------------------------------------------------
def read_path(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def iter_folder(root: Path) -> Iterator[Entry]:
    """Files below ``root`` in name order; plain strings, since this runs once per file."""
    if not root.is_dir():
        raise DataError(f"data.source {root} is not a folder")
    seen_dirs: set[tuple[int, int]] = set()

    def walk(d: str, rel: str) -> Iterator[Entry]:
        try:
            st = os.stat(d)
        except OSError as exc:
            yield Entry(rel or ".", 0, problem="unreadable", detail=str(exc))
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            yield Entry(rel, 0, problem="symlink_loop", detail="folder already visited")
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Entry(rel or ".", 0, problem="unreadable", detail=str(exc))
            return
        for child in children:
            crel = f"{rel}/{child.name}" if rel else child.name
            try:
                if child.is_dir(follow_symlinks=True):
                    yield from walk(child.path, crel)
                    continue
                if not child.is_file(follow_symlinks=True):
                    detail = "dangling symlink" if child.is_symlink() else "not a regular file"
                    problem = "symlink_loop" if child.is_symlink() and _is_loop(child.path) else "unreadable"
                    yield Entry(crel, 0, problem=problem, detail=detail)
                    continue
                cst = child.stat(follow_symlinks=True)
            except OSError as exc:
                problem = "symlink_loop" if getattr(exc, "errno", None) == 40 else "unreadable"
                yield Entry(crel, 0, problem=problem, detail=str(exc))
                continue
            # A partial of a module function pickles, so local files can go to worker processes.
            yield Entry(crel, cst.st_size, partial(read_path, child.path), stamp=str(cst.st_mtime_ns))

    yield from walk(str(root), "")


def _is_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 40  # ELOOP
    return False


# -- archives ---------------------------------------------------------------------------------
def _unsafe_member(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in p.parts:
        return "path with '..'"
    return None


def iter_archive(path: Path) -> Iterator[Entry]:
    """Members are read in place, never extracted, so nothing can be written outside the workspace."""
    if not path.is_file():
        raise DataError(f"data.source {path} does not exist")
    name = path.name.lower()
    if name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise DataError(f"data.source {path} is not a readable zip archive: {exc}") from None
        for info in zf.infolist():
            if info.is_dir():
                continue
            bad = _unsafe_member(info.filename)
            if bad:
                yield Entry(info.filename, info.file_size, problem="unsafe_archive_member", detail=bad)
                continue
            yield Entry(info.filename, info.file_size, (lambda i=info: zf.read(i)), stamp=f"crc{info.CRC}")
        return
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"data.source {path} is not a readable tar archive: {exc}") from None
    for member in tf:
        if member.isdir():
            continue
        bad = _unsafe_member(member.name)
        if bad:
            yield Entry(member.name, member.size, problem="unsafe_archive_member", detail=bad)
            continue
        if not member.isfile():
            yield Entry(member.name, 0, problem="unreadable", detail="link or special file inside archive")
            continue
        yield Entry(member.name, member.size, (lambda m=member: tf.extractfile(m).read()),
                    stamp=f"mtime{member.mtime}")


# -- S3 ---------------------------------------------------------------------------------------
def iter_s3(uri: str, store) -> Iterator[Entry]:
    """``store`` is a frugalml.store.Store on the same endpoint; the URI's bucket is used as is."""
    from frugalml.store import _translate, split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    client = store.client
    paginator = client.get_paginator("list_objects_v2")
    found = False
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                found = True

                def read(key=key) -> bytes:
                    try:
                        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    except Exception as exc:
                        raise _translate(exc, f"reading s3://{bucket}/{key}") from None

                yield Entry(key[len(prefix):], obj["Size"], read, stamp=obj["ETag"].strip('"'))
    except Exception as exc:
        from frugalml.errors import FrugalError

        if isinstance(exc, FrugalError):
            raise
        raise _translate(exc, f"listing {uri}") from None
    if not found:
        raise DataError(f"data.source {uri} holds no objects. For the demo data run: "
                        f"frugalml data upload builtin:digits {uri}")

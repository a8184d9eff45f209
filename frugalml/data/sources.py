"""Where labeled images come from: an s3:// prefix, a local folder, an archive, or builtin:<name>.

Every source yields ``Entry`` objects: a POSIX path relative to the source root (its first
component is the class, or ``train/``/``val/``/``test/`` then the class) and a way to read the
bytes. Problems found while listing (symlink loops, unsafe archive members, unreadable
folders) are yielded as entries with ``problem`` set, so they land in the ingest report.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from frugalml.core.errors import DataError
from frugalml.core.store import split_s3_uri

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
DEFAULT_MAX_FILE_BYTES = 100_000_000
_CHUNK = 1 << 20


class FileTooLarge(OSError):
    """A file turned out larger than ``data.max_file_bytes`` while it was being read."""

    def __init__(self, limit: int):
        super().__init__(f"more than {limit} bytes (data.max_file_bytes)")
        self.limit = limit


def read_capped(f, limit: int) -> bytes:
    """At most ``limit`` bytes from a file object; FileTooLarge when there are more.

    The cap holds while reading, so a declared size that lies (a zip header, a 10 GB
    zero-filled member compressed to 10 MB) never puts more than ``limit`` + 1 bytes in memory.
    Read a MiB at a time: one ``read(limit + 1)`` makes a buffered reader allocate the whole
    cap (100 MB by default) for every file, however small.
    """
    chunks, n = [], 0
    while n <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    if n > limit:
        raise FileTooLarge(limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


# -- local folder -----------------------------------------------------------------------------
def read_path(path: str, limit: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    with open(path, "rb") as f:
        return read_capped(f, limit)


def iter_folder(root: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Entry]:
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
            yield Entry(crel, cst.st_size, partial(read_path, child.path, max_bytes), stamp=str(cst.st_mtime_ns))

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


def iter_archive(
    path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES, want: Callable[[str], bool] | None = None
) -> Iterator[Entry]:
    """Members are read in place, never extracted, so nothing can be written outside the workspace.

    A tar archive is one stream: its members are read here, in order, by the thread that
    lists them, and each entry carries its own bytes. (Pool threads reading members of the
    one ``TarFile`` while it is being iterated lost most of them and mixed up their bytes.)
    A zip has a central directory and ``ZipFile`` serialises its reads, so zip members are
    read by the pool. Either way no member is read past ``max_bytes``.

    ``want(path)`` false: that tar member is listed but its bytes are not read (its entry's
    ``read`` raises). A caller that needs a few members' bytes, or only the names, streams the
    archive without holding it: memory stays one member, whatever the archive's size.
    """
    if not path.is_file():
        raise DataError(f"data.source {path} does not exist")
    if path.name.lower().endswith(".zip"):
        yield from _iter_zip(path, max_bytes)
    else:
        yield from _iter_tar(path, max_bytes, want)


def _iter_zip(path: Path, max_bytes: int) -> Iterator[Entry]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"data.source {path} is not a readable zip archive: {exc}") from None

    def read(info: zipfile.ZipInfo) -> bytes:
        with zf.open(info) as f:
            return read_capped(f, max_bytes)

    for info in zf.infolist():
        if info.is_dir():
            continue
        bad = _unsafe_member(info.filename)
        if bad:
            yield Entry(info.filename, info.file_size, problem="unsafe_archive_member", detail=bad)
        elif info.file_size > max_bytes:
            yield Entry(
                info.filename,
                info.file_size,
                problem="too_large",
                detail=f"{info.file_size} bytes > {max_bytes} (data.max_file_bytes)",
            )
        else:
            yield Entry(info.filename, info.file_size, partial(read, info), stamp=f"crc{info.CRC}")


def _iter_tar(path: Path, max_bytes: int, want: Callable[[str], bool] | None = None) -> Iterator[Entry]:
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"data.source {path} is not a readable tar archive: {exc}") from None
    seen = 0
    with tf:
        try:
            while (member := tf.next()) is not None:
                seen += 1
                tf.members.clear()  # TarFile keeps every header it read: a million members, a GB
                if not member.isdir():
                    yield _tar_entry(tf, member, max_bytes, want is None or want(member.name))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"data.source {path} is damaged after {seen} members: {exc}") from None


def _tar_entry(tf: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int, wanted: bool = True) -> Entry:
    bad = _unsafe_member(member.name)
    if bad:
        return Entry(member.name, member.size, problem="unsafe_archive_member", detail=bad)
    if not member.isfile():
        return Entry(member.name, 0, problem="unreadable", detail="link or special file inside archive")
    if member.size > max_bytes:  # a tar header's size is exact: the stream is laid out by it
        return Entry(
            member.name,
            member.size,
            problem="too_large",
            detail=f"{member.size} bytes > {max_bytes} (data.max_file_bytes)",
        )
    if not wanted:
        return Entry(member.name, member.size, partial(_not_read, member.name), stamp=f"mtime{member.mtime}")
    f = tf.extractfile(member)
    data = read_capped(f, max_bytes) if f is not None else b""
    return Entry(member.name, member.size, partial(_given, data), stamp=f"mtime{member.mtime}")


def _not_read(name: str) -> bytes:
    raise DataError(f"archive member {name} was listed without its bytes (iter_archive's want)")


def _given(data: bytes) -> bytes:
    return data


def _read_s3(store, bucket: str, key: str, max_bytes: int) -> bytes:
    data = store.read_object(bucket, key, max_bytes)
    if len(data) > max_bytes:  # the object grew since it was listed
        raise FileTooLarge(max_bytes)
    return data


# -- S3 ---------------------------------------------------------------------------------------
def iter_s3(uri: str, store, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Entry]:
    """``store`` is a frugalml.core.store.Store on the same endpoint; the URI's bucket is used as is."""

    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    found = False
    for obj in store.iter_objects(bucket, prefix):
        key = obj["key"]
        if key.endswith("/"):
            continue
        found = True
        if obj["size"] > max_bytes:
            yield Entry(
                key[len(prefix) :],
                obj["size"],
                problem="too_large",
                detail=f"{obj['size']} bytes > {max_bytes} (data.max_file_bytes)",
            )
            continue
        yield Entry(
            key[len(prefix) :], obj["size"], partial(_read_s3, store, bucket, key, max_bytes), stamp=obj["etag"]
        )
    if not found:
        raise DataError(
            f"data.source {uri} holds no objects. For the demo data run: frugalml data upload builtin:digits {uri}"
        )

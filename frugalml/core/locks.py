"""One writer per workspace: advisory file locks that die with their holder.

``flock`` locks are released by the kernel when the process that holds them exits, however
it exits, so a crash never leaves a stale lock behind. The lock file also names its holder
(pid, command, start time) for the message a second process gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from frugalml.core.errors import FrugalError

RUN_LOCK = Path(".frugalml") / "run.lock"


class WorkspaceBusy(FrugalError):
    """Another process holds the workspace (exit 2: nothing was done)."""

    exit_code = 2


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        h = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {h.get('pid')}, `{h.get('command', '?')}`, since {h.get('since', '?')}"
    except (OSError, ValueError):
        return "another process"


_held: dict[str, int] = {}  # locks this process holds: re-entered, not locked twice


@contextmanager
def workspace_lock(path: str | os.PathLike, what: str, wait: bool = False, on_wait=None) -> Iterator[None]:
    """Hold ``path`` exclusively. Busy: WorkspaceBusy, or block until free when ``wait``.

    Re-entrant within a process (``frugalml run`` holds the run lock and the flow it starts
    takes it again), exclusive between processes.
    """
    path = Path(path)
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise WorkspaceBusy(
                    f"{what} cannot start: another command is already running in this workspace ({holder}); "
                    f"wait for it to finish, or pass --wait to queue behind it"
                ) from None
            if on_wait:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
            0,
        )
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
    finally:
        os.close(fd)  # closing the last descriptor releases the lock

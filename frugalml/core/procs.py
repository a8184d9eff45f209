"""Processes we started and may stop: CPU use of a process tree, and PID records we can trust.

A PID in a state file may belong to another process after a reboot or a crash (PIDs are
reused). ``ProcessRecord`` keeps the process's start time (from /proc, in clock ticks since
boot, with the boot id) and its command line, and ``matches`` checks all of them before
anyone signals that PID.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a DVC command we start: this interpreter's bin directory first on
    PATH, because dvc.yaml's ``python -m tasks.<stage>`` must run in this venv even when the
    user called ``.venv/bin/frugalml`` without activating it. DVC's usage analytics are off
    (``DVC_NO_ANALYTICS``): otherwise every command, hundreds in a sweep, forks a background
    process that posts to analytics.dvc.org and, offline, leaves its report in the temp folder."""
    env = {**os.environ, **(extra or {}), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def thread_env(ways: int) -> dict[str, str]:
    """OpenMP/MKL thread counts for one of ``ways`` processes running side by side: the cores split
    between them. Each taking a thread per core oversubscribes the cores, and OpenMP's spinning
    threads then slow all of them many times over (two trainings side by side on 2 cores: 312 s;
    with one thread each: 44 s)."""
    n = str(max(1, (os.cpu_count() or 1) // ways))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int | str = "self") -> int | None:
    """A process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None when
    it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[19])  # field 22 of stat: starttime, in clock ticks since boot


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_ticks: int
    boot_id: str
    exe_name: str  # basename of argv[0], e.g. "weed"

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        ticks = start_ticks(pid)
        argv = _cmdline(pid)
        if ticks is None or not argv:
            return None
        return cls(pid, ticks, _boot_id(), os.path.basename(argv[0]))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProcessRecord | None:
        try:
            return cls(int(d["pid"]), int(d["start_ticks"]), str(d["boot_id"]), str(d["exe_name"]))
        except (KeyError, TypeError, ValueError):
            return None

    def matches(self) -> bool:
        """True only when the PID is still the very process recorded (same boot, start, program)."""
        if self.boot_id != _boot_id() or start_ticks(self.pid) != self.start_ticks:
            return False
        argv = _cmdline(self.pid)
        return bool(argv) and os.path.basename(argv[0]) == self.exe_name


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def idle_cpu_share(pid: int, seconds: float) -> float:
    """Share of one core used by the process tree over ``seconds`` of wall time."""
    c0, t0 = tree_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (tree_cpu_seconds(pid) - c0) / (time.monotonic() - t0)

"""Console output: messages to stderr, progress that works in a terminal and in logs."""

from __future__ import annotations

import atexit
import os
import sys
import time

from rich.console import Console

# not a terminal (logs, CI, pipes): wide enough for the cost tables (a stage per column) without cutting them
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def info(msg: str) -> None:
    err.print(msg)


def fast_exit(code: int) -> None:
    """Exit after the atexit handlers but without the interpreter's module teardown.

    The teardown takes about a second once torch, BentoML, Prefect or DVC are loaded; the
    stages and ``frugalml run`` write everything atomically and close it before exiting,
    and atexit handlers (temporary directories, Prefect's log and event workers, the local
    Prefect server) still run.
    """

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Progress:
    """Progress for long work: a live line on a terminal, a line every ~10 % or 10 s in logs."""

    def __init__(self, desc: str, total: int | None, unit: str = "items"):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_print = 0.0
        self._last_frac = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        frac = self.done / self.total if self.total else 0.0
        if self.tty:
            if now - self._last_print > 0.2 or (self.total and self.done >= self.total):
                sys.stderr.write("\r" + self._line(note) + "\x1b[K")
                sys.stderr.flush()
                self._last_print = now
        elif now - self.t0 > 2 and (frac - self._last_frac >= 0.25 or now - self._last_print > 15):
            sys.stderr.write(self._line(note) + "\n")
            sys.stderr.flush()
            self._last_print, self._last_frac = now, frac

    def _line(self, note: str) -> str:
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        tot = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", ETA {(self.total - self.done) / rate:.0f} s"
        return f"{self.desc}: {self.done}{tot} {self.unit} ({rate:.0f}/s{eta}){' ' + note if note else ''}"

    def close(self, note: str = "") -> None:
        line = self._line(note)
        sys.stderr.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        sys.stderr.flush()

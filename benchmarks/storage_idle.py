"""Idle CPU of the embedded S3 server (SeaweedFS ``weed mini``), no client connected.

    .venv/bin/python benchmarks/storage_idle.py [--seconds 60] [--runs 3] [--legacy-ports]

Starts a private server in a temporary folder, waits for it to settle, then measures the
CPU time of its process tree over the window (median of --runs windows) and counts error
lines that weed.log gained meanwhile. ``--legacy-ports`` starts it the way frugalml did
before (admin port above 55535, so its worker dials an invalid port) for a side-by-side figure.
The server is stopped on exit, on failure and on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frugalml import embedded  # noqa: E402
from frugalml.embedded import EmbeddedS3  # noqa: E402
from frugalml.procs import idle_cpu_share  # noqa: E402


def measure(seconds: float, runs: int, legacy: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="frugalml-idle-") as d:
        server = EmbeddedS3(d, bucket="frugalml")
        if legacy:
            ports = {n: p for n, p in zip(embedded.PORT_NAMES, range(56001, 56011))}
            ports["admin.port"], ports["admin.port.grpc"] = 60793, 56099
            server.dir.mkdir(parents=True, exist_ok=True)
            embedded.atomic_write_json(server.ports_file, ports)
            orig = embedded.EmbeddedS3._ports
            embedded.EmbeddedS3._ports = lambda self: ports
        try:
            info = server.up()
            time.sleep(5)  # start-up work (volume growth, leader election) is not idle time
            log0 = server.log_file.stat().st_size
            shares = [idle_cpu_share(info.pid, seconds) for _ in range(runs)]
            new_log = server.log_file.read_bytes()[log0:].decode(errors="replace").splitlines()
            errors = sum(1 for line in new_log if line[:1] in ("E", "W") or "error" in line.lower())
        finally:
            server.down()
            if legacy:
                embedded.EmbeddedS3._ports = orig
    return statistics.median(shares), errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--legacy-ports", action="store_true", help="also measure the old port choice")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally: the server stops
    share, errors = measure(a.seconds, a.runs, False)
    print(f"embedded S3 idle: {share * 100:.2f}% of a core (median of {a.runs} x {a.seconds:g} s), "
          f"{errors} warning/error lines in weed.log")
    if a.legacy_ports:
        old, old_errors = measure(a.seconds, a.runs, True)
        print(f"legacy ports:     {old * 100:.2f}% of a core, {old_errors} warning/error lines in weed.log")
        print(f"ratio legacy/now: {old / max(share, 1e-9):.1f}x")


if __name__ == "__main__":
    main()

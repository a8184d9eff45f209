"""Idle CPU of the embedded S3 server, no client connected, side by side with ``weed mini``.

    .venv/bin/python benchmarks/storage_idle.py [--seconds 60] [--runs 3] [--activity-mb 300]
                                                [--compare-mini] [--workspace DIR]

Starts a private server in a temporary folder, writes --activity-mb of objects and deletes
half of them (what a run leaves: garbage for maintenance to find), lets it settle, then
measures the CPU time of its process tree over --runs windows of --seconds (median) and
counts warning/error lines that weed.log gained meanwhile.

``--compare-mini`` measures, the same way, SeaweedFS ``weed mini`` as frugalml ran it before:
(a) with its random admin port (above 55535 its worker dials an invalid port) and (b) with the
admin gRPC port its worker expects, so the maintenance worker connects.
``--data-from WORKSPACE`` starts each server on a copy of that workspace's store (the demo's
data is what showed the difference). ``--workspace DIR`` instead measures the running server
of a workspace (e.g. after make demo).
Servers are stopped on exit, on failure and on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frugalml.core.embedded import EmbeddedS3, _weed_binary  # noqa: E402
from frugalml.core.procs import idle_cpu_share  # noqa: E402


class MiniAsBefore(EmbeddedS3):
    """``weed mini`` with the flags frugalml used to give it (admin server and worker included)."""

    def __init__(self, root, admin_port: int, admin_grpc: int):
        super().__init__(root, bucket="frugalml")
        self.admin = (admin_port, admin_grpc)

    def command(self, data_dir, ports):
        return [
            _weed_binary(),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *[f"-{name}={port}" for name, port in ports.items()],
            f"-admin.port={self.admin[0]}",
            f"-admin.port.grpc={self.admin[1]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-s3.config={self.credentials_file}",
        ]


def activity(info, megabytes: int) -> None:
    """Write ``megabytes`` in 8 MB objects, read them back twice, then delete every other one
    (what a run does to the store: uploads, downloads, deleted checkpoints)."""
    from frugalml.core.store import S3Settings, Store

    store = Store(
        S3Settings(
            "frugalml",
            "bench/",
            info.endpoint_url,
            "us-east-1",
            info.access_key_id,
            info.secret_access_key,
            embedded=True,
        )
    )
    blob = os.urandom(8 << 20)
    keys = [f"obj-{i:04d}" for i in range(max(1, megabytes // 8))]
    for k in keys:
        store.put_bytes(k, blob)
    for _ in range(2):
        for k in keys:
            store.get_bytes(k)
    for k in keys[::2]:
        store.delete(k)


def measure(
    server: EmbeddedS3, seconds: float, runs: int, megabytes: int, seed: Path | None = None
) -> tuple[float, list[float], int]:
    if seed is not None:  # start from a copy of a real store (its data dir and key)
        import shutil

        shutil.copytree(seed / "data", server.dir / "data")
        shutil.copy2(seed / "s3.json", server.credentials_file)
    try:
        info = server.up()
        if megabytes:
            activity(info, megabytes)
        time.sleep(10)  # the writes' own follow-up (flushes, heartbeats) is not idle time
        log0 = server.log_file.stat().st_size
        shares = [idle_cpu_share(info.pid, seconds) for _ in range(runs)]
        new_log = server.log_file.read_bytes()[log0:].decode(errors="replace").splitlines()
        errors = sum(1 for line in new_log if line[:1] in ("E", "W"))
    finally:
        server.down()
    return statistics.median(shares), shares, errors


def line(name: str, result) -> str:
    med, shares, errors = result
    return (
        f"{name:<34} {med * 100:6.2f}% of a core (median; {', '.join(f'{s * 100:.2f}%' for s in shares)}), "
        f"{errors} warning/error lines in weed.log"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--activity-mb", type=int, default=300)
    ap.add_argument("--compare-mini", action="store_true")
    ap.add_argument("--workspace", type=Path)
    ap.add_argument(
        "--data-from",
        type=Path,
        metavar="WORKSPACE",
        help="start each server on a copy of this workspace's store (e.g. after make demo)",
    )
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally: the server stops
    if a.workspace:
        server = EmbeddedS3(a.workspace)
        info = server.info()
        if info is None:
            raise SystemExit(f"no embedded server runs for {a.workspace}")
        shares = [idle_cpu_share(info.pid, a.seconds) for _ in range(a.runs)]
        print(line(str(a.workspace), (statistics.median(shares), shares, 0)))
        return
    seed = a.data_from / ".frugalml" / "storage" if a.data_from else None
    print(
        f"{a.runs} x {a.seconds:g} s after writing {a.activity_mb} MB and deleting half"
        f"{f', on a copy of {seed}' if seed else ''}, no client connected"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="frugalml-idle-") as d:
        results["now"] = measure(EmbeddedS3(Path(d) / "now"), a.seconds, a.runs, a.activity_mb, seed)
        print(line("weed server (frugalml now)", results["now"]), flush=True)
        if a.compare_mini:
            for name, admin in (
                ("weed mini, admin port 60793", (60793, 56099)),
                ("weed mini, worker connected", (31793, 41793)),
            ):
                results[name] = measure(
                    MiniAsBefore(Path(d) / name.replace(" ", "_").replace(",", ""), *admin),
                    a.seconds,
                    a.runs,
                    a.activity_mb,
                    seed,
                )
                print(line(name, results[name]), flush=True)
            worst = max(r[0] for r in results.values())
            print(f"ratio worst weed mini / weed server: {worst / max(results['now'][0], 1e-9):.1f}x")


if __name__ == "__main__":
    main()

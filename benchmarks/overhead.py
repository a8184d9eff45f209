"""Orchestration overhead of `frugalml run` on the demo, and what an unchanged re-run costs.

    .venv/bin/python benchmarks/overhead.py

Builds a throwaway git + DVC repo with the pipeline and its own embedded SeaweedFS, uploads
the built-in digits dataset (as `make demo` does), then in one invocation measures:

* cold run: end-to-end wall of the `frugalml run` process (start to exit) next to the sum
  of the stages' own wall (each stage process meters itself from its own start, imports
  included): ratio (target <= 1.15) and the fixed seconds (Prefect, DVC, process starts,
  push, record). Twice: with Prefect's temporary server (no PREFECT_API_URL: what `make
  demo` does; the temporary server starts and stops inside the run) and against a running
  `prefect server` (how scheduled runs go);
* unchanged re-run: its wall as a fraction of the cold run's (target <= 0.10);
* the cost meter's own overhead: its enter/exit and the boto3 request hooks, timed in
  isolation and multiplied by what the cold run used, as a share of the stage wall (< 1%).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH_DIR, BIN, ROOT, bin_on_path, pipeline_repo  # noqa: E402

sys.path.insert(0, str(ROOT))
from frugalml.contracts import STAGES  # noqa: E402


def timed_run(cmd, cwd, env) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{cmd} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return wall, res.stdout + res.stderr


def meter_overhead_s(requests: int, stages: int) -> dict:
    """Seconds the meter itself costs: enter/exit per stage, two hooks per S3 request."""
    from types import SimpleNamespace

    from frugalml.core.costs import CostMeter
    from frugalml.core.store import _count_request, _count_response

    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        with CostMeter("bench", "bench", count_startup=True):
            pass
    per_meter = (time.perf_counter() - t0) / n
    model = SimpleNamespace(name="PutObject")
    body = b"x" * 1024
    resp = SimpleNamespace(headers={"content-length": "1024"})
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        _count_request(model, {"body": body})
        _count_response(http_response=resp, parsed={"Body": None})
    per_request = (time.perf_counter() - t0) / n
    return {
        "per_stage_s": per_meter,
        "per_request_s": per_request,
        "total_s": per_meter * stages + per_request * requests,
    }


def start_prefect_server(home: Path, env: dict) -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server did not start")


def cold_and_unchanged(cli, repo, env, seed: int) -> dict:
    """A cold run (prepared data removed, a new seed: every stage runs) then an unchanged one."""
    shutil.rmtree(repo / "data" / "prepared", ignore_errors=True)
    (repo / "data" / "manifest.csv").unlink(missing_ok=True)
    cold_wall, _ = timed_run(cli + ["run", "--set", f"train.seed={seed}"], repo, env)
    costs = {s: json.loads((repo / "costs" / f"{s}.json").read_text()) for s in STAGES}
    assert all(c["run_id"] == costs["ingest"]["run_id"] for c in costs.values()), "not every stage ran"
    stage_wall = sum(c["wall_s"] for c in costs.values())
    again_wall, again_out = timed_run(cli + ["run"], repo, env)
    assert "no change" in again_out, again_out[-2000:]
    return {
        "cold_run_wall_s": round(cold_wall, 2),
        "sum_of_stage_wall_s": round(stage_wall, 2),
        "stage_wall_s": {s: c["wall_s"] for s, c in costs.items()},
        "overhead_ratio": round(cold_wall / stage_wall, 3),
        "fixed_overhead_s": round(cold_wall - stage_wall, 2),
        "unchanged_run_wall_s": round(again_wall, 2),
        "unchanged_to_cold_ratio": round(again_wall / cold_wall, 3),
        "_requests": sum(c.get("s3_requests_put", 0) + c.get("s3_requests_get", 0) for c in costs.values()),
    }


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    from frugalml.core.embedded import EmbeddedS3

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        env = bin_on_path(
            {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_", "PREFECT_API"))}
        )
        env["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        repo = pipeline_repo(Path(tmp) / "repo", env)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=repo, check=True
        )
        server = EmbeddedS3(repo, bucket="frugalml")
        server.up()
        cli = [sys.executable, "-m", "frugalml.cli"]
        try:
            timed_run(cli + ["data", "upload", "builtin:digits"], repo, env)
            # A first flow run in this PREFECT_HOME creates Prefect's database: not part of a run.
            timed_run(cli + ["run", "--until", "ingest"], repo, env)
            print("temporary Prefect server: cold run, then unchanged ...", flush=True)
            ephemeral = cold_and_unchanged(cli, repo, env, seed=101)
            print("running prefect server: cold run, then unchanged ...", flush=True)
            server_proc, api = start_prefect_server(Path(tmp) / "prefect-server", env)
            try:
                served = cold_and_unchanged(cli, repo, {**env, "PREFECT_API_URL": api}, seed=102)
            finally:
                server_proc.terminate()
                server_proc.wait()
            requests = ephemeral.pop("_requests")
            served.pop("_requests")
            meter = meter_overhead_s(requests, len(STAGES))
        finally:
            server.down()
    result = {
        "temporary_prefect_server": ephemeral,
        "running_prefect_server": served,
        "meter_s3_requests": requests,
        "meter_per_stage_ms": round(meter["per_stage_s"] * 1000, 3),
        "meter_per_request_us": round(meter["per_request_s"] * 1e6, 2),
        "meter_overhead_pct_of_stage_wall": round(100 * meter["total_s"] / ephemeral["sum_of_stage_wall_s"], 4),
        "targets": {
            "overhead_ratio": "<= 1.15",
            "unchanged_to_cold_ratio": "<= 0.10",
            "meter_overhead_pct_of_stage_wall": "< 1",
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

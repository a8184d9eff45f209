"""The fixed cost of running a stage on a work pool instead of here, on the demo, in one run.

    .venv/bin/python benchmarks/dispatch.py [--rounds 3] [--capacity spot]

A throwaway git + DVC repo with the pipeline, a bare git remote it pushes to, its own embedded
SeaweedFS, a running `prefect server`, a process work pool `gpu` and a worker in its own clone
(polling every 2 s: PREFECT_WORKER_QUERY_SECONDS). On builtin:digits (as `make demo`), each round
runs `frugalml run --until train` twice from cold (prepared data removed, a new seed), once with
`orchestration.pools: {default: local, train: gpu}` and once all local, and compares the flow's
time on the train stage (task start to end: DVC's checks, for the remote one also pushing its
inputs, the worker's pick-up, the clone, `dvc pull`, `dvc push`, the merge and the pull back)
with the train stage's own wall. Prints the medians: the fixed seconds remote and local, their
difference (target: under 15 s on this machine), the worker's breakdown (materialize, repro,
push) and the remote fixed cost as a share of the train stage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH_DIR, BIN, ROOT, bin_on_path, exit_cleanly_on_sigterm, pipeline_repo  # noqa: E402
from overhead import start_prefect_server, timed_run  # noqa: E402

sys.path.insert(0, str(ROOT))
GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]


def train_row(store, repo: Path) -> tuple[dict, dict | None]:
    run_id = json.loads((repo / "costs" / "train.json").read_text())["run_id"]
    record = store.get_json(f"runs/{run_id}/record.json")
    row = next(s for s in record["stages"] if s["stage"] == "train")
    assert row["status"] == "ran", row
    try:
        result = store.get_json(f"runs/{run_id}/stages/train/result.json")
    except Exception:  # noqa: BLE001 - a local run has none
        result = None
    return row, result


def one(cli, repo: Path, env: dict, seed: int, pools: str, capacity: str) -> None:
    import shutil

    shutil.rmtree(repo / "data" / "prepared", ignore_errors=True)
    (repo / "data" / "manifest.csv").unlink(missing_ok=True)
    sets = [f"train.seed={seed}", f"orchestration.pools={pools}", f"train.capacity={capacity}"]
    timed_run(cli + ["run", "--until", "train", *[a for s in sets for a in ("--set", s)]], repo, env)


def main() -> None:
    exit_cleanly_on_sigterm()
    from frugalml.core.config import StorageConfig
    from frugalml.core.embedded import EmbeddedS3
    from frugalml.core.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--capacity", choices=["on_demand", "spot"], default="on_demand", help="train.capacity of the runs")
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        tmp = Path(tmp)
        env = bin_on_path(
            {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_", "PREFECT_API"))}
        )
        env["PREFECT_HOME"] = str(tmp / "prefect")
        repo = pipeline_repo(tmp / "repo", env)
        for name in ("infra",):
            subprocess.run(["cp", "-r", str(ROOT / name), str(repo / name)], check=True)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run([*GIT, "commit", "-qm", "bench"], cwd=repo, check=True)
        origin = tmp / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], check=True)
        subprocess.run(["git", "remote", "add", "origin", str(origin)], cwd=repo, check=True)
        subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], cwd=repo, check=True)
        server = EmbeddedS3(repo, bucket="frugalml")
        info = server.up()
        s3 = {
            "FRUGALML_S3_ENDPOINT": info.endpoint_url,
            "AWS_ACCESS_KEY_ID": info.access_key_id,
            "AWS_SECRET_ACCESS_KEY": info.secret_access_key,
        }
        cli = [sys.executable, "-m", "frugalml.cli"]
        prefect_proc = worker = None
        try:
            prefect_proc, api = start_prefect_server(tmp / "prefect-server", env)
            env = {**env, **s3, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "2"}
            timed_run(cli + ["data", "upload", "builtin:digits"], repo, env)
            clone = tmp / "worker-gpu"
            subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
            timed_run([str(BIN / "prefect"), "work-pool", "create", "gpu", "--type", "process"], clone, env)
            deploy = [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "gpu", "--prefect-file"]
            timed_run(deploy + ["infra/prefect.yaml"], clone, {**env, "FRUGALML_REPO": str(clone)})
            log = open(tmp / "worker.log", "w")
            (tmp / "worker-tmp").mkdir()  # Prefect's runner leaves an empty runner_storage/ in the temp folder
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--type", "process"],
                cwd=clone,
                env={**env, "TMPDIR": str(tmp / "worker-tmp")},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            timed_run(cli + ["run", "--until", "ingest"], repo, env)  # Prefect's first run: not measured
            os.environ.update(s3)  # this process reads the records
            store = Store.from_config(StorageConfig())
            remote, local, parts = [], [], []
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}: train on the gpu pool, then here ...", flush=True)
                one(cli, repo, env, 200 + r, "{default: local, train: gpu}", args.capacity)
                row, result = train_row(store, repo)
                if r == args.rounds - 1:  # the cost table of a run with the remote stage
                    run_id = json.loads((repo / "costs" / "train.json").read_text())["run_id"]
                    _, table = timed_run(cli + ["costs", "--run", run_id], repo, env)
                remote.append((row["check_wall_s"], row["wall_s"]))
                parts.append((result["materialize_s"], result["repro_s"], result["publish_s"]))
                one(cli, repo, env, 200 + r, "{default: local}", args.capacity)
                row, _ = train_row(store, repo)
                local.append((row["check_wall_s"], row["wall_s"]))
        finally:
            if worker is not None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait()
            if prefect_proc is not None:
                prefect_proc.terminate()
                prefect_proc.wait()
            server.down()

    print(table)

    def med(values):
        return round(statistics.median(values), 2)

    remote_fixed = med([c - w for c, w in remote])
    local_fixed = med([c - w for c, w in local])
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "train_stage_wall_s": {"remote": med([w for _, w in remote]), "local": med([w for _, w in local])},
                "flow_time_on_train_s": {"remote": med([c for c, _ in remote]), "local": med([c for c, _ in local])},
                "fixed_s": {"remote": remote_fixed, "local": local_fixed},
                "remote_extra_fixed_s": round(remote_fixed - local_fixed, 2),
                "worker_s": {
                    "materialize (clone + inputs + dvc pull)": med([p[0] for p in parts]),
                    "dvc repro (the stage, DVC's checks included)": med([p[1] for p in parts]),
                    "dvc push of the outs": med([p[2] for p in parts]),
                },
                "remote_fixed_share_of_train_stage": round(remote_fixed / med([w for _, w in remote]), 3),
                "target": "remote extra fixed < 15 s on this machine",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

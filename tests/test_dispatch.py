"""Stages on Prefect work pools: a real Prefect server, process pools `cpu` and `gpu` with a worker
each in its own clone of the repo, the flow in a third workspace; train runs on the `gpu` worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frugalml.core.errors import NotFound
from tests.conftest import BIN, ROOT, make_pipeline_repo, prefect_api, prefect_client_env, run

pytestmark = pytest.mark.slow
FRUGALML = [sys.executable, "-m", "frugalml.cli"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _workers(tmp_path: Path, origin: Path, env: dict):
    """A process pool and a worker per pool, each in its own clone of ``origin``."""
    procs = []
    for pool in ("cpu", "gpu"):
        clone = tmp_path / f"worker-{pool}"
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
        run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], clone, env=env)
        deploy = [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", pool, "--prefect-file", "infra/prefect.yaml"]
        run(deploy, clone, env={**env, "FRUGALML_REPO": str(clone)})
        log = open(tmp_path / f"worker-{pool}.log", "w")
        tmp = tmp_path / f"tmp-{pool}"  # Prefect's runner leaves an empty runner_storage/ in the temp folder
        tmp.mkdir()
        procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                cwd=clone,
                env={**env, "TMPDIR": str(tmp)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _lock_essentials(repo: Path) -> dict:
    """dvc.lock's stages without what differs between any two ingests of the same images (the
    shard names in the manifest carry the ingest time) or any two runs (reports and cost ledgers
    hold times): the code deps, the params and the model's md5."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {
        stage: {
            "deps": sorted(
                (d["path"], d.get("md5")) for d in e.get("deps", []) if d["path"].split("/")[0] in ("frugalml", "tasks")
            ),
            "outs": sorted((o["path"], o.get("md5")) for o in e.get("outs", []) if o["path"] == "models/model.pt"),
            "params": e.get("params"),
        }
        for stage, e in lock.items()
    }


def _flow_repo(tmp_path: Path, store, params: list[str], rename_pool: tuple[str, str] | None = None) -> Path:
    """The orchestrating workspace: the pipeline with ``params`` and infra/, committed."""
    (tmp_path / "flow").mkdir()
    repo = make_pipeline_repo(tmp_path / "flow", store, params)
    shutil.copytree(ROOT / "infra", repo / "infra")
    if rename_pool:
        deployments = repo / "infra" / "prefect.yaml"
        old, new = rename_pool
        deployments.write_text(deployments.read_text().replace(f"name: {old}\n", f"name: {new}\n"))
    run(["git", "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "infra"], repo)
    return repo


# Long enough to land a SIGTERM after the first epoch's checkpoint, before the last epoch.
LONGER = ["--set", "train.epochs=10", "--set", "train.batch_size=4", "--set", "train.capacity=spot"]


def test_train_on_the_gpu_pool_equals_a_local_run_also_through_a_spot_interruption(prefect_server, store, tmp_path):
    """One run with train on the `gpu` pool. Its worker's flow run is sent SIGTERM after the first
    epoch (a spot notice; as on Kubernetes, the signal reaches the pod's process, which passes it
    on to the stage): training stops at the next step, the stage exits as transient, Prefect
    retries it, the retry resumes from the checkpoint in the store. That retry is then killed
    outright (a node lost) and retried again. Then the same run here: dvc.lock (the model's md5:
    bitwise the same weights) and metrics are equal, and the ledger shows the interruptions and
    the spot saving."""
    api = prefect_server
    env = prefect_client_env(api, tmp_path / "client-home")
    pools = ["orchestration.pools={default: local, train: gpu}", "orchestration.submit_timeout_s=120"]
    repo = _flow_repo(tmp_path, store, pools)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)

    # An unpushed commit: refused before any stage runs, naming the commit (no worker needed).
    (repo / "notes.txt").write_text("not pushed")
    run(["git", "add", "notes.txt"], repo)
    run([*GIT, "commit", "-qm", "local only"], repo)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    res = run(FRUGALML + ["run", "--until", "evaluate"], repo, check=False, env=env)
    assert res.returncode != 0 and f"commit {head[:12]} is not on {origin}" in res.stderr, res.stderr[-2000:]
    assert "Running stage" not in res.stderr and not (repo / "data" / "manifest.csv").exists()
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)

    workers = _workers(tmp_path, origin, env)
    try:
        out, run_id = _run_with_a_spot_notice_mid_training(store, tmp_path, repo, env)
        _check_remote_run(api, store, tmp_path, out, run_id)
        _check_equals_a_local_run(tmp_path, store, repo, env)
    finally:
        _stop(workers)


def _checkpointed_epoch(store, run_id: str | None) -> int:
    try:
        return store.get_json(f"checkpoints/{run_id}/latest.json")["epoch"] if run_id else 0
    except NotFound:
        return 0


def _run_with_a_spot_notice_mid_training(store, tmp_path, repo, env) -> tuple[str, str]:
    """``frugalml run --until evaluate``; SIGTERM to the gpu worker's flow run once epoch 1 is in
    the store (a spot notice), then SIGKILL to the retry's flow run and stage once epoch 3 is (a
    node lost at once: no notice, no result)."""
    log_path = tmp_path / "spot-run.log"
    worker, run_id = tmp_path / "worker-gpu", None

    def when(epoch: int) -> tuple[int, int]:
        nonlocal run_id
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            copies = list((worker / ".frugalml" / "remote").glob("*-train-*"))
            run_id = run_id or (copies[0].name.rsplit("-train-", 1)[0] if copies else None)
            pids = _stage_processes(worker) if _checkpointed_epoch(store, run_id) >= epoch else None
            if pids:
                return pids
            time.sleep(0.1)
        raise AssertionError(log_path.read_text()[-3000:])

    with open(log_path, "w") as log:
        cmd = FRUGALML + ["run", "--until", "evaluate", *LONGER]
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            flow_run, _ = when(epoch=1)
            os.kill(flow_run, signal.SIGTERM)  # as Kubernetes does: the pod's process, not the training
            flow_run, repro = when(epoch=3)  # the retry, resumed
            os.kill(flow_run, signal.SIGKILL)
            os.killpg(repro, signal.SIGKILL)  # the stage went down with its node
            assert proc.wait(timeout=900) == 0, log_path.read_text()[-5000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    return log_path.read_text(), run_id


def _check_remote_run(api, store, tmp_path, out, run_id) -> None:
    gpu_log = (tmp_path / "worker-gpu.log").read_text()
    assert "train on pool gpu" in gpu_log and "resuming after epoch" in gpu_log, gpu_log[-3000:]
    assert "on pool" not in (tmp_path / "worker-cpu.log").read_text()
    assert "was interrupted: stopped by SIGTERM in epoch" in out, out[-3000:]
    assert "crashed" in out, out[-3000:]  # the attempt whose node was lost, retried too
    runs = prefect_api(api, "/flow_runs/filter", {"deployments": {"name": {"any_": ["gpu"]}}})
    runs.sort(key=lambda r: r["created"])
    # the spot notice (its result published, then Prefect's own SIGTERM handling), the lost node, the one that finished
    assert [(r["state_type"], r["work_pool_name"], r["parameters"]["stage"]) for r in runs] == [
        ("CRASHED", "gpu", "train"),
        ("CRASHED", "gpu", "train"),
        ("COMPLETED", "gpu", "train"),
    ], [(r["state_type"], r["state_name"]) for r in runs]
    assert all(f"run:{run_id}" in r["tags"] for r in runs)
    assert not any((tmp_path / "worker-gpu" / ".frugalml" / "remote").iterdir())  # the materialized copies are gone

    # The cost table shows the remote stage and its pool; the record names it and prices the spot capacity.
    assert "train @gpu" in out  # the cost table's row
    record = store.get_json(f"runs/{run_id}/record.json")
    pools_by_stage = {s["stage"]: s.get("pool") for s in record["stages"]}
    assert pools_by_stage["train"] == "gpu" and pools_by_stage["ingest"] is None and pools_by_stage["evaluate"] is None
    train = next(s for s in record["stages"] if s["stage"] == "train")
    assert train["status"] == "ran" and train["interruptions"] == 1 and 0 < train["interrupted_usd"] < train["usd"]
    assert train["lost_attempts"] == 1 and "1 attempt(s) lost with their worker" in out
    # lost: the steps of epoch 2 before the stop, and the retry's start until it resumed
    assert train["capacity"] == "spot" and 0 < train["lost_s"] and 0 < train["lost_usd"] < train["usd"]
    assert train["on_demand_usd"] > train["usd"]  # spot saved money, the lost work included
    assert "train: spot $" in out and "1 interruption(s): the stopped attempts cost $" in out, out[-3000:]
    print(next(line for line in out.splitlines() if line.startswith("train: spot $")))  # for the README
    result = store.get_json(f"runs/{run_id}/stages/train/result.json")
    assert result["exit_code"] == 0 and result["pool"] == "gpu" and "metrics/train.json" in result["files"]


def _check_equals_a_local_run(tmp_path, store, repo, env) -> None:
    """The orchestrating workspace is as after a local, uninterrupted run: dvc status clean, same lock and metrics."""
    status = run([str(BIN / "dvc"), "status", "evaluate"], repo, env=env).stdout  # the run stopped there
    assert "up to date" in status, status
    (tmp_path / "local").mkdir()
    name = yaml.safe_load((repo / "params.yaml").read_text())["model"]["name"]
    local = make_pipeline_repo(tmp_path / "local", store, [f"model.name={name}"])  # the same params
    run(FRUGALML + ["run", "--until", "evaluate", *LONGER], local, env=env, timeout=900)
    assert _lock_essentials(repo) == _lock_essentials(local)
    assert _lock_essentials(repo)["train"]["outs"]  # the model's md5: bitwise the same weights
    for name in ("eval.json", "train.json"):
        a, b = (json.loads((r / "metrics" / name).read_text()) for r in (repo, local))
        keys = ("accuracy", "macro_f1", "final_val_acc", "final_train_loss", "epochs_run")
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, name


def _stage_processes(worker: Path) -> tuple[int, int] | None:
    """(the worker's flow run, its ``dvc repro``) while ``python -m tasks.train`` runs in the
    materialized copy: the flow run is what a pod's SIGTERM reaches; the repro leads the stage's
    process group."""
    repro = flow_run = train = None
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cwd.startswith(str(worker)) and b"repro" in cmd and b"dvc" in cmd:
            repro, flow_run = int(proc.name), ppid
        if cwd.startswith(str(worker)) and b"tasks.train" in cmd:
            train = int(proc.name)
    return (flow_run, repro) if train and repro else None


def test_a_pool_without_a_worker_fails_in_bounded_time_naming_the_pool(prefect_server, store, tmp_path):
    api = prefect_server
    env = prefect_client_env(api, tmp_path / "client-home")
    extra = ["orchestration.pools={default: local, validate: idle}", "orchestration.submit_timeout_s=5"]
    repo = _flow_repo(tmp_path, store, extra, rename_pool=("cpu", "idle"))
    run(["git", "remote", "add", "origin", str(repo)], repo)  # the repo itself: the commit is reachable
    run([str(BIN / "prefect"), "work-pool", "create", "idle", "--type", "process"], repo, env=env)
    deploy = [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "idle", "--prefect-file", "infra/prefect.yaml"]
    run(deploy, repo, env={**env, "FRUGALML_REPO": str(repo)})
    t0 = time.monotonic()
    res = run(FRUGALML + ["run", "--until", "validate"], repo, check=False, env=env)
    assert res.returncode != 0 and time.monotonic() - t0 < 180
    assert "no worker of work pool 'idle' picked it up within 5 s" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    runs = prefect_api(api, "/flow_runs/filter", {"deployments": {"name": {"any_": ["idle"]}}})
    assert [r["state_type"] for r in runs] == ["CANCELLED"]  # not left scheduled for a worker that may come later


def test_merge_takes_only_the_stage_s_own_outputs_from_the_store(store, tmp_path, monkeypatch):
    """Trust round 2, item 2: whoever can write runs/<id>/stages/<stage>/result.json in the bucket
    must not get dvc.yaml, code or git hooks written on the orchestrating machine."""
    from frugalml.contracts import RemoteStage
    from frugalml.core.errors import StorageError
    from frugalml.runs import dispatch
    from tests.conftest import make_pipeline_repo

    repo = make_pipeline_repo(tmp_path, store)
    monkeypatch.chdir(repo)
    base = dispatch.prefix("run-x", "train")
    hostile = ["dvc.yaml", "tasks/train.py", ".git/hooks/pre-commit", "metrics/train.json"]
    for rel in hostile:
        store.put_bytes(base + "out/" + rel, b"#!/bin/sh\necho owned\n")
    before = {rel: (repo / rel).read_bytes() if (repo / rel).exists() else None for rel in hostile}

    def result(files, stage="train"):
        r = RemoteStage(stage=stage, run_id="run-x", pool="gpu", commit="c", worker="w", exit_code=0, files=files)
        store.put_bytes(base + "result.json", r.model_dump_json().encode())

    for files in (hostile, ["tasks/train.py"], [".git/hooks/pre-commit"]):
        result(files)
        with pytest.raises(StorageError, match="not among the stage's own outputs"):
            dispatch.merge(store, "run-x", "train")
        assert {rel: (repo / rel).read_bytes() if (repo / rel).exists() else None for rel in hostile} == before
    result(["metrics/train.json"], stage="evaluate")  # another stage's result under this stage's prefix
    with pytest.raises(StorageError):
        dispatch.merge(store, "run-x", "train")
    result(["metrics/train.json", "costs/train.json"])  # the stage's own files are merged
    store.put_bytes(base + "out/costs/train.json", b"{}")
    dispatch.merge(store, "run-x", "train")
    assert (repo / "metrics/train.json").read_bytes() == b"#!/bin/sh\necho owned\n"


def test_a_token_in_the_git_remote_never_leaves_the_process(tmp_path):
    """Trust round 2, item 14: credentials in the remote URL are kept out of the flow-run
    parameters (Prefect's database and UI) and out of error messages."""
    from frugalml.core.errors import ConfigError
    from frugalml.runs import dispatch

    url = "https://ci-bot:ghp_s3cretT0ken@127.0.0.1:9/team/pipeline.git"
    assert dispatch.redact(url) == "https://127.0.0.1:9/team/pipeline.git"
    assert dispatch.redact(f"fatal: unable to access '{url}/': refused") == (
        "fatal: unable to access 'https://127.0.0.1:9/team/pipeline.git/': refused"
    )
    assert dispatch.redact("git@github.com:team/pipeline.git") == "git@github.com:team/pipeline.git"  # ssh: no secret
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(ConfigError) as e:
        dispatch.check_reachable(url, "0" * 40, tmp_path)
    assert "ghp_s3cretT0ken" not in str(e.value) and "127.0.0.1:9/team/pipeline.git" in str(e.value)
    import inspect

    from flows import stages

    assert "dispatch.redact(dispatch.repo_url(" in inspect.getsource(stages._submit)

"""Faults: the object store goes away in the middle of a run and comes back.

A second, private SeaweedFS server is stopped while the pipeline runs (the shared one stays
up for the other tests) and started again on the same ports. The run must complete through
Prefect's retries, or fail cleanly, and leave nothing half-written in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_pipeline_repo

pytestmark = pytest.mark.slow
FRUGALML = [sys.executable, "-m", "frugalml.cli"]


@pytest.fixture
def private_s3(tmp_path_factory, monkeypatch, s3_server):
    from frugalml.core.embedded import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("seaweedfs-fault"), bucket="frugalml")
    info = server.up()
    monkeypatch.setenv("FRUGALML_S3_ENDPOINT", info.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", info.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", info.secret_access_key)
    yield server, info
    server.down()


def _wait(cond, proc, log: Path, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = cond()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-5000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-5000:]}")


def assert_nothing_half_written(store) -> int:
    """Every object is whole: sha256 metadata or DVC's content address matches the bytes."""
    checked = 0
    for obj in store.list(""):
        key = obj["key"]
        if key.startswith(".health/"):
            continue
        data, _ = store.get_bytes(key, verify=True)  # raises when the sha256 metadata does not match
        if key.startswith("dvc/files/md5/"):
            digest = key[len("dvc/files/md5/") :].replace("/", "").removesuffix(".dir")
            assert hashlib.md5(data).hexdigest() == digest, f"{key}: DVC object does not match its address"
        checked += 1
    run_ids = {o["key"].split("/")[1] for o in store.list("runs/")}
    for rid in run_ids:  # a run's files without its record.json would be a torn record
        assert store.exists(f"runs/{rid}/record.json"), f"runs/{rid}/ has files but no record.json"
    return checked


def test_store_outage_mid_run_is_retried_and_nothing_is_half_written(private_s3, tmp_path):
    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store

    server, info = private_s3
    store = Store.from_config(StorageConfig(prefix="fault/"))
    repo = make_pipeline_repo(tmp_path, store, ["train.epochs=6"])
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(FRUGALML + ["run"], cwd=repo, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        # Stop the store once training is under way; keep it down until a stage has failed on it.
        _wait(
            lambda: list((repo / ".frugalml" / "checkpoints").glob("*/last.pt")),
            proc,
            log,
            600,
            "the first training checkpoint",
        )
        assert server.down()
        status_dir = repo / ".frugalml" / "status"

        def transient_failure():
            for f in status_dir.glob("*.json") if status_dir.exists() else []:
                st = json.loads(f.read_text())
                if st.get("transient"):
                    return st
            return None

        failed = _wait(transient_failure, proc, log, 300, "a stage to fail on the stopped store")
        time.sleep(1)
        server.up()
        assert server.info().endpoint_url == info.endpoint_url  # restarted on the same ports
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out[-6000:]
    assert "did not answer" in failed["message"]
    assert "Retry 1/3 will start" in out  # Prefect retried the stage that met the outage

    runs = sorted({o["key"].split("/")[1] for o in store.list("runs/") if o["key"].endswith("/record.json")})
    assert len(runs) == 1
    record = store.get_json(f"runs/{runs[0]}/record.json")
    assert record["status"] == "succeeded" and record["package"]["version"]
    assert assert_nothing_half_written(store) > 10


def test_sigterm_to_frugalml_run_leaves_nothing_running(tmp_path, store):
    """A scheduler or CI timeout stops `frugalml run` with SIGTERM mid-stage: the run ends, and the
    local Prefect server it started (and every other process below it) ends with it."""
    import os
    import signal

    import psutil

    repo = make_pipeline_repo(tmp_path, store, extra=["train.epochs=30"])
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        FRUGALML + ["run"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: set[int] = set()
    try:
        deadline = time.time() + 300
        for line in proc.stdout:
            seen |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            if "train: epoch 1/" in line or time.time() > deadline:
                break
        assert any("uvicorn" in " ".join(_cmdline(p)) for p in seen), "the run's local Prefect server"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 30
    while time.time() < deadline and [p for p in seen if psutil.pid_exists(p) and _alive(p)]:
        time.sleep(0.5)
    left = [" ".join(_cmdline(p))[:120] for p in seen if psutil.pid_exists(p) and _alive(p)]
    for p in seen:  # whatever failed the check is not left for the next test
        if psutil.pid_exists(p) and _alive(p):
            psutil.Process(p).kill()
    assert not left, left


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

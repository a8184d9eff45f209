"""Schedules against a real `prefect server`: `frugalml schedule` and infra/prefect.yaml."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, run

pytestmark = pytest.mark.slow
FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, method="GET" if body is None else "POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture
def prefect_server(tmp_path, s3_server):
    """A real Prefect server on 127.0.0.1 with its own database; yields the API URL."""
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "prefect-server.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            if _api(url, "/health") is True:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                "prefect server did not start:\n" + (tmp_path / "prefect-server.log").read_text()[-3000:]
            )
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _client_env(api_url: str, home: Path) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)}
    for k in ("PREFECT_SERVER_LOGGING_LEVEL", "PREFECT_SERVER_DATABASE_TIMEOUT"):
        env.pop(k, None)
    return env


def test_scheduled_deployment_run_completes_on_a_real_prefect_server(prefect_server, pipeline_repo, store, tmp_path):
    api, repo = prefect_server, pipeline_repo
    env = _client_env(api, tmp_path / "client-home")

    # infra/prefect.yaml registers both deployments on a process work pool.
    shutil.copytree(ROOT / "infra", repo / "infra")
    run([str(BIN / "prefect"), "work-pool", "create", "frugalml", "--type", "process"], repo, env=env)
    run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
        repo,
        env={**env, "FRUGALML_REPO": str(repo)},
    )
    deployments = {d["name"]: d for d in _api(api, "/deployments/filter", {})}
    assert {"nightly", "promote"} <= set(deployments)
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/pipeline.py:training_pipeline"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert deployments["promote"]["entrypoint"] == "flows/promote.py:promotion_flow"

    # `frugalml schedule` serves the pipeline every minute; wait for a scheduled run to complete.
    log = tmp_path / "schedule.log"
    with open(log, "w") as out:
        served = subprocess.Popen(
            FRUGALML + ["schedule", "--cron", "* * * * *", "--name", "every-minute"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 420
        done = None
        while time.monotonic() < deadline and done is None:
            assert served.poll() is None, log.read_text()[-5000:]
            runs = _api(api, "/flow_runs/filter", {"deployments": {"name": {"any_": ["every-minute"]}}})
            for fr in runs:
                if fr["state_type"] in ("FAILED", "CRASHED"):
                    raise AssertionError(f"scheduled run {fr['state_type']}:\n{log.read_text()[-6000:]}")
                if fr["state_type"] == "COMPLETED":
                    done = fr
            time.sleep(2)
        assert done is not None, "no scheduled run completed in time:\n" + log.read_text()[-6000:]
    finally:
        served.terminate()
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.kill()
    assert done["auto_scheduled"] is True

    # The run left its record in S3, tied to the Prefect flow run, and its artifacts in Prefect.
    records = [store.get_json(o["key"]) for o in store.list("runs/") if o["key"].endswith("/record.json")]
    mine = [r for r in records if r["flow_run_id"] == done["id"]]
    assert len(mine) == 1 and mine[0]["status"] == "succeeded" and mine[0]["orchestrator"] == "prefect"
    keys = {a["key"] for a in _api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [done["id"]]}}})}
    assert {"data-summary", "validation-result", "metrics", "gate-decision", "cost-table"} <= keys

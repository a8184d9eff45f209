"""Schedules against a real `prefect server`: `frugalml schedule` and infra/prefect.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN, ROOT, prefect_api, prefect_client_env, run

pytestmark = pytest.mark.slow
FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def test_scheduled_deployment_run_completes_on_a_real_prefect_server(prefect_server, pipeline_repo, store, tmp_path):
    api, repo = prefect_server, pipeline_repo
    env = prefect_client_env(api, tmp_path / "client-home")

    # infra/prefect.yaml registers both deployments on a process work pool.
    shutil.copytree(ROOT / "infra", repo / "infra")
    run([str(BIN / "prefect"), "work-pool", "create", "frugalml", "--type", "process"], repo, env=env)
    run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "nightly", "--name", "promote"]
        + ["--prefect-file", "infra/prefect.yaml"],
        repo,
        env={**env, "FRUGALML_REPO": str(repo)},
    )
    deployments = {d["name"]: d for d in prefect_api(api, "/deployments/filter", {})}
    assert {"nightly", "promote"} <= set(deployments)
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/pipeline.py:training_pipeline"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert deployments["promote"]["entrypoint"] == "flows/promote.py:promotion_flow"

    # `frugalml schedule` serves the pipeline every minute; wait for a scheduled run to complete.
    log = tmp_path / "schedule.log"
    with open(log, "w") as out:
        (tmp_path / "tmp").mkdir()  # Prefect's runner leaves an empty runner_storage/ in the temp folder
        served = subprocess.Popen(
            FRUGALML + ["schedule", "--cron", "* * * * *", "--name", "every-minute"],
            cwd=repo,
            env={**env, "TMPDIR": str(tmp_path / "tmp")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 420
        done = None
        while time.monotonic() < deadline and done is None:
            assert served.poll() is None, log.read_text()[-5000:]
            runs = prefect_api(api, "/flow_runs/filter", {"deployments": {"name": {"any_": ["every-minute"]}}})
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
    query = {"artifacts": {"flow_run_id": {"any_": [done["id"]]}}}
    keys = {a["key"] for a in prefect_api(api, "/artifacts/filter", query)}
    assert {"data-summary", "validation-result", "metrics", "variants", "gate-decision", "cost-table"} <= keys

"""Label Studio for real: `labels next` -> a Label Studio project -> annotations through its API ->
its JSON export -> `labels import` -> the next run ingests the labels.

Label Studio (the `label-studio` package) pins its own Django stack, so it lives in its own
virtual environment, ``.frugalml/label-studio/venv`` (created on first use: about 2 minutes;
later runs reuse it). It runs on 127.0.0.1 with its own SQLite database in the test's folder,
and is stopped (its whole process group) when the test ends, passes or not.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port as free_port
from tests.conftest import run
from tests.test_labels import unlabeled_repo  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".frugalml" / "label-studio" / "venv"
SPEC = "label-studio>=1.20,<2"
TOKEN = "frugalml0test0token0000000000000000000000"
FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def label_studio_bin() -> Path:
    exe = VENV / "bin" / "label-studio"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", SPEC], check=True, timeout=1200)
    return exe


@pytest.fixture
def label_studio(tmp_path):
    """A running Label Studio on 127.0.0.1 with a fresh SQLite database; yields (url, api)."""
    exe, port = label_studio_bin(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "LABEL_STUDIO"))}
    env |= {"LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "PATH": f"{exe.parent}:{env.get('PATH', '')}"}
    log = (tmp_path / "label-studio.log").open("w")
    proc = subprocess.Popen(
        [
            str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(tmp_path / "ls-data"), "--username", "annotator@example.com",
            "--password", "not-a-real-password", "--user-token", TOKEN, "--enable-legacy-api-token",
        ],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def api(method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
        req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "label-studio.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Label Studio did not answer /health in 300 s"
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url, api
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_a_label_studio_round_trip_buys_labels_the_next_run_ingests(unlabeled_repo, label_studio):  # noqa: F811
    repo, source, truth = unlabeled_repo
    url, api = label_studio
    batch = json.loads(run(FRUGALML + ["labels", "next", "--budget", "8", "--json"], repo, timeout=600).stdout)
    tasks = json.loads((repo / "reports" / "labels_next_tasks.json").read_text())
    config = (repo / "reports" / "labels_next_config.xml").read_text()
    assert len(tasks) == len(batch["chosen"]) == 8

    # the project from labels_next_config.xml, the tasks imported through the API
    project = api("POST", "/api/projects", {"title": "frugalml labels next", "label_config": config})
    imported = api("POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == 8
    listed = api("GET", f"/api/tasks?project={project['id']}&page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(listed) == 8
    for task in listed:  # each task's image, fetched from the presigned URL Label Studio holds
        with urllib.request.urlopen(task["data"]["image"], timeout=30) as r:
            assert hashlib.sha256(r.read()).hexdigest() == task["data"]["sha256"]
        # an annotator picks the class, through the API the labeling UI calls
        choice = truth[task["data"]["source_path"]]
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
        api("POST", f"/api/tasks/{task['id']}/annotations", {"result": result})

    export = api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    assert len(export) == 8 and all(t["annotations"] for t in export)
    path = repo / "label-studio-export.json"
    path.write_text(json.dumps(export))
    out = run(FRUGALML + ["labels", "import", str(path)], repo).stderr
    assert "imported 8 labels" in out, out
    record = json.loads(next((repo / ".frugalml" / "labels" / "imports").glob("*.json")).read_text())
    assert {x["label"] for x in record["labels"]} <= set(truth.values())
    assert all(x["label"] == truth[x["source_path"]] for x in record["labels"])

    run(FRUGALML + ["run", "--until", "ingest"], repo, timeout=600)
    ingest = json.loads((repo / "metrics" / "headline" / "ingest.json").read_text())
    cost = json.loads((repo / "costs" / "ingest.json").read_text())
    assert ingest["new_images"] == 8 and cost["labeled_images"] == 8

"""Shared fixtures: one real SeaweedFS server per test session, tiny datasets, pipeline repos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REPO_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "tasks", "frugalml", "flows", "models"]


def pytest_configure(config):
    """SIGTERM (CI cancelling a job, `timeout`) ends the run like Ctrl-C: pytest then still
    tears the fixtures down, so the SeaweedFS server, `bentoml serve` backends and other
    processes the tests started are stopped, not orphaned."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)
    # every `dvc` the tests start (`dvc init` too): no analytics daemon, no report left in /tmp
    os.environ["DVC_NO_ANALYTICS"] = "1"
    # the ONNX export (compress stage) makes torch's inductor cache folder: here, not /tmp/torchinductor_<user>
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".frugalml" / "torchinductor"))
    _split_threads(config)


def _split_threads(config) -> None:
    """Each xdist worker (and every command its tests start) gets its share of the cores: two
    workers that each train with a thread per core oversubscribe them, and OpenMP's spinning
    threads then slow both many times over (`procs.thread_env`). The worker count is known here
    only in the workers (``workerinput``); the controller runs no tests. A user's
    ``OMP_NUM_THREADS`` is kept."""
    from frugalml.core.procs import thread_env

    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or workers < 2 or os.environ.get("OMP_NUM_THREADS"):
        return
    os.environ.update(thread_env(int(workers)))
    if "torch" in sys.modules:  # imported by a plugin before this hook: its pool is already sized
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1, shared by the session; env points clients at it."""
    from frugalml.core.embedded import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("seaweedfs"), bucket="frugalml")
    info = server.up()
    saved = {
        k: os.environ.get(k)
        for k in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_HOME", "PATH")
    }
    os.environ.update(
        {
            "FRUGALML_S3_ENDPOINT": info.endpoint_url,
            "AWS_ACCESS_KEY_ID": info.access_key_id,
            "AWS_SECRET_ACCESS_KEY": info.secret_access_key,
            "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect")),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    yield server, info
    server.down()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def store(s3_server):
    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store

    return Store.from_config(StorageConfig(prefix=f"t-{uuid.uuid4().hex[:8]}"))


COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def make_dataset(root: Path, per_class: int = 30, size: int = 16, seed: int = 0) -> Path:
    """Three easy classes of small noisy colour patches, as <class>/<name>.png."""
    rng = np.random.default_rng(seed)
    for label, rgb in COLORS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / label / f"{label}_{i:03d}.png")
    return root


def upload_folder(store, folder: Path, rel_prefix: str) -> str:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            store.put_bytes(f"{rel_prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes())
    return store.uri(rel_prefix)


def run(cmd, cwd, check=True, timeout=900, env=None):
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if os.environ.get("FRUGALML_TEST_TIMES"):  # where the suite's time goes, command by command
        with open(os.environ["FRUGALML_TEST_TIMES"], "a") as f:
            f.write(f"{time.perf_counter() - t0:7.1f} s  {' '.join(map(str, cmd[-6:]))[:160]}\n")
    if check and res.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {res.returncode}\nSTDOUT:\n{res.stdout[-4000:]}\nSTDERR:\n{res.stderr[-6000:]}"
        )
    return res


def make_pipeline_repo(tmp_path: Path, store, extra: list[str] | None = None) -> Path:
    """A fresh git + DVC repo holding the pipeline, pointed at a tiny dataset in ``store``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    for name in REPO_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
        else:
            shutil.copy2(src, repo / name)
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    source = upload_folder(store, make_dataset(tmp_path / "src"), "sources/tiny")
    from frugalml.core.config import write_overrides

    name = f"tiny-{uuid.uuid4().hex[:6]}"
    write_overrides(
        repo / "params.yaml",
        [
            f"data.source={source}",
            f"storage.prefix={store.prefix}",
            f"model.name={name}",
            "model.arch=resnet18",
            "model.pretrained=none",  # the tests that need ImageNet weights ask for them
            "train.augment.rotation_deg=10",  # the default 180 suits the demo's shapes, not digits (6 vs 9)
            "model.image_size=16",
            "train.epochs=4",
            "train.batch_size=16",
            "validate.min_images_per_class=5",
            "gates.min_accuracy=0.6",
            "evaluate.latency_samples=10",
            "compress.variants=[fp32]",  # ONNX export + int8: ~10 s a run; the tests of variants ask for them
            *(extra or []),
        ],
    )
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], repo)
    return repo


@pytest.fixture
def pipeline_repo(tmp_path, store):
    """A fresh git + DVC repo holding the pipeline, pointed at a tiny dataset in S3."""
    return make_pipeline_repo(tmp_path, store)


# -- a real Prefect server -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_api(url: str, path: str, body: dict | None = None):
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
            if prefect_api(url, "/health") is True:
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


def prefect_client_env(api_url: str, home: Path) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)}
    for k in ("PREFECT_SERVER_LOGGING_LEVEL", "PREFECT_SERVER_DATABASE_TIMEOUT"):
        env.pop(k, None)
    return env

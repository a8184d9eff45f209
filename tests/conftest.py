"""Shared fixtures: one real SeaweedFS server per test session, tiny datasets, pipeline repos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1, shared by the session; env points clients at it."""
    from frugalml.embedded import EmbeddedS3

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
    from frugalml.config import StorageConfig
    from frugalml.store import Store

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
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
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
    from frugalml.config import write_overrides

    name = f"tiny-{uuid.uuid4().hex[:6]}"
    write_overrides(
        repo / "params.yaml",
        [
            f"data.source={source}",
            f"storage.prefix={store.prefix}",
            f"model.name={name}",
            "model.arch=resnet18",
            "model.image_size=16",
            "train.epochs=4",
            "train.batch_size=16",
            "validate.min_images_per_class=5",
            "gates.min_accuracy=0.6",
            "evaluate.latency_samples=10",
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

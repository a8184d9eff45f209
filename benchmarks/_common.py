"""What the benchmark scripts share: where they work, and a throwaway pipeline repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Work files live in the workspace: on some machines /tmp creates files 20x slower than the disk.
BENCH_DIR = ROOT / ".frugalml" / "bench"
REPO_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "tasks", "frugalml", "flows", "models"]


def pipeline_repo(repo: Path, env: dict) -> Path:
    """A git + DVC repo at ``repo`` holding this checkout's pipeline (working-tree files)."""
    repo.mkdir(parents=True)
    for name in REPO_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
        else:
            shutil.copy2(src, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    return repo


def bin_on_path(env: dict) -> dict:
    """``env`` for the commands a benchmark starts: this venv first, DVC's analytics off."""
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so every ``finally`` runs: servers and backends a benchmark
    started are stopped when it is killed, as they are when it fails."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

"""Private copies of the workspace, so that a sweep can run trials side by side (``sweep.parallel``).

DVC runs one ``dvc exp run --temp`` at a time per repository: the temporary experiments of one
workspace share its git stash and its lock. A lane is a clone of the workspace at its commit,
with the workspace's uncommitted changes, its untracked run state (``dvc.lock``, metrics, ...)
and its DVC settings, and with DVC's cache pointed at the workspace's own cache: outputs are
stored once, and ``dvc exp apply`` in the workspace finds them. A trial runs in a lane exactly as
it runs in the workspace (``dvc exp run --temp``); its experiment ref is then pushed to the
workspace, so that ``dvc exp show`` there lists every trial of every lane.

Lanes live under ``.frugalml/lanes/<sweep id>/<n>`` (git-ignored; DVC skips nested repos) and are
removed when the sweep ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from frugalml.core.errors import FrugalError
from frugalml.core.procs import dvc_env

LANES = Path(".frugalml") / "lanes"


def _git(*args: str, cwd: Path | str = ".") -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise FrugalError(f"git {' '.join(args[:2])} failed in {cwd}: {res.stderr.strip()[-300:]}")
    return res.stdout


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def make_lanes(sweep_id: str, count: int, carried: tuple[str, ...]) -> list[Path]:
    """``count`` lanes for one sweep, each the workspace as ``dvc exp run --temp`` would see it."""
    root = Path.cwd().resolve()
    home = root / LANES / sweep_id
    shutil.rmtree(home, ignore_errors=True)  # a killed sweep's lanes: rebuilt from the workspace now
    head = _git("rev-parse", "HEAD").strip()
    changed = [p for p in _git("ls-files", "-z", "-m", "-o", "--exclude-standard").split("\0") if p]
    deleted = {p for p in _git("ls-files", "-z", "-d").split("\0") if p}
    cache = subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir"], capture_output=True, text=True, env=dvc_env()
    ).stdout.strip() or str(root / ".dvc" / "cache")
    lanes = []
    for n in range(count):
        lane = home / str(n)
        _git("clone", "-q", "--no-checkout", str(root), str(lane))
        _git("checkout", "-q", "--detach", head, cwd=lane)
        for rel in deleted:
            (lane / rel).unlink(missing_ok=True)
        for rel in [*changed, *carried, ".dvc/config.local"]:
            if rel not in deleted and (root / rel).exists():
                _copy(root / rel, lane / rel)
        res = subprocess.run(
            [sys.executable, "-m", "dvc", "cache", "dir", "--local", cache],
            cwd=lane,
            capture_output=True,
            text=True,
            env=dvc_env(),
        )
        if res.returncode:
            raise FrugalError(f"lane {n}: dvc cache dir failed: {res.stderr.strip()[-300:]}")
        lanes.append(lane)
    return lanes


def publish(lane: Path, ref: str) -> None:
    """The lane's experiment ref (and its commit) into the workspace, where ``dvc exp`` finds it."""
    _git("push", "-q", "--force", str(Path.cwd().resolve()), f"{ref}:{ref}", cwd=lane)


def remove_lanes(sweep_id: str) -> None:
    shutil.rmtree(LANES / sweep_id, ignore_errors=True)

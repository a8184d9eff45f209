"""Re-run a recorded run and compare its metrics.

In a temporary git worktree at the run's commit, with the run's params.yaml and dvc.lock
(from its record in S3), the recorded data and model are pulled from the DVC remote, then
the train and evaluate stages are forced to run again. The model's own metrics must come out
the same (bit for bit on CPU with a fixed seed); any difference is listed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path, PurePosixPath

from frugalml.core.console import info
from frugalml.core.errors import FrugalError
from frugalml.core.procs import dvc_env
from frugalml.core.store import Store
from frugalml.runs.records import get_record

TRAIN_KEYS = ("final_train_loss", "final_train_acc", "final_val_acc", "epochs_run", "parameters")
EVAL_KEYS = ("accuracy", "macro_f1", "top3_accuracy", "ece", "per_class", "test_images")


def _sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise FrugalError(f"`{' '.join(cmd)}` failed in {cwd}:\n{(res.stderr or res.stdout)[-3000:]}")
    return res.stdout


def _diff(label: str, old: dict, new: dict, keys) -> list[str]:
    out = []
    for k in keys:
        if old.get(k) != new.get(k):
            out.append(
                f"{label}.{k}: recorded {json.dumps(old.get(k))[:200]} != reproduced {json.dumps(new.get(k))[:200]}"
            )
    return out


def safe_relpath(name: str) -> str:
    """A file name from a run record, checked before it becomes a path: relative, no '..',
    no backslash or control characters. A record is data from the bucket, not trusted code."""

    p = PurePosixPath(str(name))
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or any(ord(c) < 32 for c in name):
        raise FrugalError(f"the run record names an unsafe file {name!r}; refusing to write it")
    return p.as_posix()


def reproduce(store: Store, run_id: str, root: Path = Path("."), keep: bool = False) -> list[str]:
    """Returns the list of differences (empty when the run reproduced exactly)."""
    record = get_record(store, run_id)
    commit = record.git_commit
    if not commit:
        raise FrugalError(f"run {run_id} has no git commit in its record: it cannot be checked out")
    if record.git_dirty:
        info(f"reproduce: warning: run {run_id} ran with uncommitted changes; the code at {commit[:10]} may differ")
    names = ["params.yaml", "dvc.lock"] + [
        safe_relpath(f) for f in record.files if str(f).startswith(("metrics/", "costs/"))
    ]
    work = (root / ".frugalml" / "reproduce" / f"{run_id}-{uuid.uuid4().hex[:6]}").resolve()
    work.parent.mkdir(parents=True, exist_ok=True)
    _sh(["git", "worktree", "add", "--detach", str(work), commit], root)
    try:
        base = f"runs/{run_id}/"
        # params, lock, and the uncached outputs (metrics, costs) that later stages depend on
        for name in names:
            store.download(base + name, work / name)
        local = root / ".dvc" / "config.local"
        if local.exists():
            shutil.copy2(local, work / ".dvc" / "config.local")
        env = dvc_env({"FRUGALML_RUN_ID": f"reproduce-{run_id}-{uuid.uuid4().hex[:6]}", "PYTHONUNBUFFERED": "1"})
        dvc = [sys.executable, "-m", "dvc"]
        info(f"reproduce: {run_id} at commit {commit[:10]} in {work}; pulling its data and model")
        t0 = time.perf_counter()
        _sh(dvc + ["pull", "--quiet"], work, env)
        cache = work / ".dvc" / "cache"
        pulled = [f for f in cache.rglob("*") if f.is_file()] if cache.exists() else []
        info(
            f"reproduce: dvc pull: {len(pulled)} objects, {sum(f.stat().st_size for f in pulled) / 1e6:.1f} MB "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        for stage in ("train", "evaluate"):
            info(f"reproduce: running {stage} again")
            _sh(dvc + ["repro", "--force", "--single-item", stage], work, env)
        differences = []
        for name, keys in (("train", TRAIN_KEYS), ("eval", EVAL_KEYS)):
            old = json.loads(store.get_bytes(f"{base}metrics/{name}.json")[0])
            new = json.loads((work / "metrics" / f"{name}.json").read_text())
            differences += _diff(name, old, new, keys)
        return differences
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=root, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)

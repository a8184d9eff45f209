"""Stages on Prefect work pools, without Prefect: what the orchestrating workspace sends, what a
worker does with it, and how the result is merged back.

The orchestrating workspace (``flows/pipeline.py``) runs ``send_inputs``: the run's params.yaml
and dvc.lock, and the uncached outputs of earlier stages that the stage depends on (small JSON
files such as ``metrics/validation.json``), go to ``runs/<run_id>/stages/<stage>/in/``; the
cached ones go to the DVC remote (``dvc push``). A worker (``flows/remote_stage.py``) then
``materialize``s the workspace at the run's commit (``git clone`` + ``checkout``, the inputs,
``dvc pull`` of the deps), runs ``dvc repro --single-item <stage>``, pushes the outs to the DVC
remote and ``publish``es the stage's dvc.lock entry and uncached outputs to ``.../out/`` with a
``RemoteStage`` record. ``merge`` writes them into the orchestrating workspace, whose
``dvc pull <stage>`` then brings the cached outs: ``dvc status`` is clean, as after a local run.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from frugalml.contracts import RemoteStage, cost_file, headline_file, status_file
from frugalml.core.errors import ConfigError, StorageError
from frugalml.core.fsutil import atomic_write_bytes, atomic_write_text
from frugalml.core.store import NotFound, Store

FLOW_NAME = "frugalml-stage"  # deployments: frugalml-stage/<pool>


def prefix(run_id: str, stage: str) -> str:
    return f"runs/{run_id}/stages/{stage}/"


@dataclass
class StageFiles:
    """A stage's files as dvc.yaml declares them."""

    deps: list[str] = field(default_factory=list)
    cached_outs: list[str] = field(default_factory=list)
    uncached_outs: list[str] = field(default_factory=list)


def _outs(spec: dict) -> tuple[list[str], list[str]]:
    cached, uncached = [], []
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key) or []:
            path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            (uncached if (opts or {}).get("cache") is False else cached).append(path)
    return cached, uncached


def read_stages(root: Path = Path(".")) -> dict[str, StageFiles]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        cached, uncached = _outs(spec)
        out[name] = StageFiles(list(spec.get("deps") or []), cached, uncached)
    return out


def inputs_of(stage: str, root: Path = Path(".")) -> tuple[list[str], list[str]]:
    """(cached, uncached): the stage's deps that earlier stages write. Cached ones travel by the
    DVC remote, uncached ones by ``send_inputs``; the rest of the deps are code, in git."""
    stages = read_stages(root)
    cached = {p for s in stages.values() for p in s.cached_outs}
    uncached = {p for s in stages.values() for p in s.uncached_outs}
    deps = stages[stage].deps
    return [d for d in deps if d in cached], [d for d in deps if d in uncached]


def own_files(stage: str, root: Path = Path(".")) -> list[str]:
    """What a stage writes that DVC does not cache: its declared uncached outs, its cost entry
    and headline (declared), and its failure status (not declared: written only on failure)."""
    files = read_stages(root)[stage].uncached_outs
    extra = [cost_file(stage).as_posix(), headline_file(stage).as_posix(), status_file(stage).as_posix()]
    return list(dict.fromkeys(files + extra))


def _declared(rel: str, own: list[str]) -> bool:
    """``rel`` is one of the stage's own files, or inside one of its declared output folders."""
    return any(rel == o.rstrip("/") or rel.startswith(o.rstrip("/") + "/") for o in own)


def _safe(rel: str) -> str:
    """A relative path inside the workspace, or an error: names from the store never escape it."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise StorageError(f"refusing the path {rel!r} from the store: not inside the workspace")
    return p.as_posix()


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it removed (``https://user:token@host/...`` ->
    ``https://host/...``): for what leaves the process (flow-run parameters, messages). A worker
    clones with its own git credentials."""
    return _USERINFO.sub("", text)


# -- the orchestrating workspace ----------------------------------------------------------------
def repo_url(git_remote: str, root: Path = Path(".")) -> str:
    """``orchestration.git_remote`` as a URL: a remote's name is looked up, anything else is a URL or a path."""
    res = subprocess.run(["git", "remote", "get-url", git_remote], cwd=root, capture_output=True, text=True)
    if res.returncode == 0:
        return res.stdout.strip()
    if "/" in git_remote or ":" in git_remote:
        return str(Path(git_remote).resolve()) if Path(git_remote).exists() else git_remote
    raise ConfigError(f"orchestration.git_remote {git_remote!r} is neither a git remote of this repo nor a URL")


def check_reachable(url: str, commit: str, root: Path = Path(".")) -> None:
    """A worker clones ``url`` and checks out ``commit``: fail now, before any stage runs, when
    no branch or tag there contains it."""
    if not commit:
        raise ConfigError("remote stages need a git commit: commit the pipeline first (`git commit`)")
    res = subprocess.run(["git", "ls-remote", url], cwd=root, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise ConfigError(f"the workers' git remote {redact(url)} cannot be read: {redact(res.stderr.strip())[:300]}")
    for sha in {line.split()[0] for line in res.stdout.splitlines() if line.strip()}:
        known = subprocess.run(["git", "cat-file", "-e", sha], cwd=root, capture_output=True).returncode == 0
        if known and subprocess.run(["git", "merge-base", "--is-ancestor", commit, sha], cwd=root).returncode == 0:
            return
    raise ConfigError(
        f"commit {commit[:12]} is not on {redact(url)} (no branch or tag there contains it): "
        "push it first; the workers run the code of the run's commit"
    )


def send_inputs(store: Store, run_id: str, stage: str) -> None:
    """The run's params.yaml and dvc.lock, and the uncached deps, for the worker. An earlier
    attempt's result goes: a worker that dies without one must not be read as that attempt."""
    store.delete(prefix(run_id, stage) + "result.json")
    _, uncached = inputs_of(stage)
    for rel in ["params.yaml", "dvc.lock", *uncached]:
        if Path(rel).is_file():
            store.put_bytes(prefix(run_id, stage) + "in/" + rel, Path(rel).read_bytes())


def merge(store: Store, run_id: str, stage: str) -> RemoteStage:
    """The worker's result into this workspace: its uncached outputs, and its dvc.lock entry for
    the stage (the other entries stay this workspace's)."""
    try:
        data, _ = store.get_bytes(prefix(run_id, stage) + "result.json")
    except NotFound:
        raise StorageError(f"stage {stage}: the worker left no result under {prefix(run_id, stage)}") from None
    result = RemoteStage.model_validate_json(data)
    # Whoever can write the bucket writes result.json: only this stage's own files, as this
    # workspace's dvc.yaml declares them, are taken (never dvc.yaml, code or .git), and nothing
    # is written unless every file named is one of them.
    own = own_files(stage)
    foreign = [rel for rel in result.files if not _declared(_safe(rel), own)]
    if foreign or result.stage != stage:
        raise StorageError(
            f"stage {stage}: the worker's result names {', '.join(map(repr, foreign[:3])) or repr(result.stage)}, "
            f"not among the stage's own outputs in dvc.yaml; refused, nothing merged"
        )
    for rel in result.files:
        blob, _ = store.get_bytes(prefix(run_id, stage) + "out/" + _safe(rel))
        atomic_write_bytes(Path(_safe(rel)), blob)
    if result.lock_entry is not None:
        lock_path = Path("dvc.lock")
        lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else None
        lock = lock or {"schema": "2.0", "stages": {}}
        lock.setdefault("stages", {})[stage] = result.lock_entry
        atomic_write_text(lock_path, yaml.safe_dump(lock, sort_keys=False))
    return result


# -- the worker ---------------------------------------------------------------------------------
def materialize(store: Store, run_id: str, stage: str, url: str, commit: str, dest: Path) -> None:
    """The workspace at ``commit`` in ``dest`` with the run's inputs (not yet the DVC data)."""
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", url, str(dest)], check=True, capture_output=True)
    res = subprocess.run(["git", "checkout", "--quiet", commit], cwd=dest, capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError(
            f"commit {commit[:12]} is not in {redact(url)}: push it first ({redact(res.stderr.strip())[:200]})"
        )
    pre = prefix(run_id, stage) + "in/"
    for obj in store.list(pre):
        rel = _safe(obj["key"][len(pre) :])
        blob, _ = store.get_bytes(pre + rel)
        atomic_write_bytes(dest / rel, blob)


def publish(store: Store, workdir: Path, result: RemoteStage) -> None:
    """The stage's uncached outputs and its dvc.lock entry, then the record (last: its presence
    says the rest is there)."""
    pre = prefix(result.run_id, result.stage)
    result.files = []
    for rel in own_files(result.stage, workdir):
        if (workdir / rel).is_file():
            store.put_bytes(pre + "out/" + rel, (workdir / rel).read_bytes())
            result.files.append(rel)
    lock = workdir / "dvc.lock"
    if result.exit_code == 0 and lock.exists():
        result.lock_entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(result.stage)
    store.put_bytes(pre + "result.json", result.model_dump_json(indent=2).encode())

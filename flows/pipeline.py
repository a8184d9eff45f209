"""The training pipeline as a Prefect flow: one task per DVC stage, then dvc push, then the record.

Each task runs ``dvc repro --single-item <stage>``, so dvc.lock is updated exactly as by
``dvc repro`` and an up-to-date stage is skipped. Transient faults (the object store not
answering) are retried with backoff; rejections (validation failed, gate rejected) are not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from frugalml import config
from frugalml.dvcconf import write_local_config
from frugalml.errors import FrugalError, Rejected, TransientStorageError
from frugalml.fsutil import read_json
from frugalml.lineage import git_commit, git_dirty
from frugalml.runs import STAGES, write_record
from frugalml.store import Store, resolve_settings

STATUS_DIR = Path(".frugalml") / "status"


class StageFailed(FrugalError):
    """A stage ended with an unexpected error (exit code 1)."""


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    wall_s: float
    cost: dict = field(default_factory=dict)
    failed: bool = False


def _env(run_id: str) -> dict:
    env = dict(os.environ)
    env["FRUGALML_RUN_ID"] = run_id
    env["PYTHONUNBUFFERED"] = "1"
    bindir = str(Path(sys.executable).parent)  # DVC's shell must find this venv's python
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _dvc(args: list[str], run_id: str, echo: bool = True) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(run_id), bufsize=1)
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        if echo:
            sys.stderr.write(line)
    return proc.wait(), "\n".join(tail)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientStorageError:
        return True
    except Exception:
        return False
    return False


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def run_stage(stage: str, run_id: str) -> StageOutcome:
    status = STATUS_DIR / f"{stage}.json"
    status.unlink(missing_ok=True)
    t0 = time.perf_counter()
    code, tail = _dvc(["repro", "--single-item", stage], run_id)
    wall = time.perf_counter() - t0
    if code != 0:
        if status.exists():
            st = read_json(status)
            if st["exit_code"] == 3:
                raise Rejected(st["message"])
            if "did not answer" in st["message"] or "answered 5" in st["message"]:
                raise TransientStorageError(f"stage {stage}: {st['message']}")
            raise StageFailed(f"stage {stage} failed: {st['message']}")
        if any(s in tail for s in ("Could not connect", "ConnectTimeout", "EndpointConnectionError",
                                    "Connection refused", "Read timeout")):
            raise TransientStorageError(f"stage {stage}: DVC could not reach the object store:\n{tail}")
        raise StageFailed(f"stage {stage}: dvc repro failed (exit {code}):\n{tail}")
    cost_file = Path("costs") / f"{stage}.json"
    cost = read_json(cost_file) if cost_file.exists() else {}
    ran = cost.get("run_id") == run_id
    return StageOutcome(stage, ran, wall, cost if ran else {})


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def dvc_push(run_id: str) -> float:
    t0 = time.perf_counter()
    code, tail = _dvc(["push", "--quiet"], run_id, echo=False)
    if code != 0:
        raise TransientStorageError(f"dvc push failed:\n{tail}")
    return time.perf_counter() - t0


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def record_run(cfg_storage, run_id: str, record: dict) -> str:
    files = [Path("params.yaml"), Path("dvc.lock")]
    files += sorted(Path("metrics").glob("*.json")) + sorted(Path("costs").glob("*.json"))
    files += sorted(Path("plots").glob("*.csv"))
    files += sorted(p for p in Path("reports").rglob("*") if p.is_file()) if Path("reports").exists() else []
    return write_record(Store.from_config(cfg_storage), run_id, record, files)


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def auto_promote(cfg, version: str, alias: str) -> dict:
    """``promotion.auto``: point the alias at the version this run packaged (gate accepted)."""
    from frugalml.registry import Registry

    Registry(Store.from_config(cfg.storage), cfg.model.name).promote(version, alias, reason="promotion.auto")
    return {"alias": alias, "version": version}


def _failed_outcome(stage: str, run_id: str) -> StageOutcome:
    """The cost of a stage that ended in rejection or failure (it still ran and cost money)."""
    cost_file = Path("costs") / f"{stage}.json"
    cost = read_json(cost_file) if cost_file.exists() else {}
    ran = cost.get("run_id") == run_id
    return StageOutcome(stage, ran, cost.get("wall_s", 0.0) if ran else 0.0, cost if ran else {}, failed=True)


def cost_rows(outcomes: list[StageOutcome]) -> list[dict]:
    rows = []
    for o in outcomes:
        c = o.cost
        status = "failed" if o.failed else "ran" if o.ran else "up to date"
        rows.append({"stage": o.stage, "status": status,
                     "wall_s": round(c.get("wall_s", 0.0), 2), "cpu_s": round(c.get("cpu_s", 0.0), 2),
                     "peak_rss_mb": c.get("peak_rss_mb", 0), "usd": c.get("total_usd", 0.0),
                     "labeling_usd": c.get("labeling_usd", 0.0), "labeled_images": c.get("labeled_images", 0),
                     "check_wall_s": round(o.wall_s, 2)})
    return rows


@flow(name="frugalml-training", log_prints=True)
def training_pipeline(run_id: str, overrides: list[str] | None = None, until: str | None = None) -> dict:
    """Run the stages in order; returns the run record (status: succeeded, rejected or failed)."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    cfg = config.load()
    settings = resolve_settings(cfg.storage)
    write_local_config(cfg, settings)
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    outcomes: list[StageOutcome] = []
    status, message = "succeeded", ""
    t0 = time.perf_counter()
    for stage in stages:
        if stage == "package" and outcomes and read_json(Path("metrics/gate.json"))["decision"] != "accept":
            gate = read_json(Path("metrics/gate.json"))
            status, message = "rejected", f"gate rejected the model (failed: {', '.join(gate['failed'])})"
            break
        try:
            outcomes.append(run_stage.with_options(name=stage)(stage, run_id))
        except FrugalError as exc:
            status = "rejected" if isinstance(exc, Rejected) else "failed"
            message = str(exc)
            outcomes.append(_failed_outcome(stage, run_id))
            break
    promoted = None
    packaged = next((o for o in outcomes if o.stage == "package" and o.ran), None)
    if status == "succeeded" and packaged and cfg.promotion.auto != "none":
        promoted = auto_promote(cfg, read_json(Path("metrics/package.json"))["version"], cfg.promotion.auto)
    push_s = 0.0
    if status != "failed":
        push_s = dvc_push(run_id)
    rows = cost_rows(outcomes)
    gate = read_json(Path("metrics/gate.json")) if Path("metrics/gate.json").exists() and any(
        o.stage == "gate" for o in outcomes) else None
    total_usd = round(sum(r["usd"] for r in rows), 6)
    changed = any(o.ran for o in outcomes)
    record = {
        "run_id": run_id, "status": status, "message": message,
        "no_change": not changed and status == "succeeded",
        "flow_run_id": str(flow_run.id) if flow_run.id else "",
        "git_commit": git_commit(), "git_dirty": git_dirty(),
        "overrides": overrides or [], "until": until, "params": config.dump(cfg),
        "stages": rows, "total_usd": total_usd, "dvc_push_s": round(push_s, 2),
        "wall_s": round(time.perf_counter() - t0, 2),
        "gate": gate, "promoted": promoted, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if Path("metrics/package.json").exists() and any(o.stage == "package" for o in outcomes):
        record["package"] = read_json(Path("metrics/package.json"))
    record["record_uri"] = record_run(cfg.storage, run_id, record)
    create_table_artifact(key="cost-table", table=rows, description=f"Per-stage cost of run {run_id}")
    if gate:
        lines = [f"**Decision: {gate['decision']}**", "", "| check | value | threshold | passed |", "|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['value']} | {c['op']} {c['threshold']} | {c['passed']} |" for c in gate["checks"]]
        create_markdown_artifact(key="gate-decision", markdown="\n".join(lines))
    logger.info("run %s %s; record at %s", run_id, status, record["record_uri"])
    return record

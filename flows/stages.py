"""One Prefect task per DVC stage: ``run_stage`` runs ``dvc repro --single-item <stage>`` here (transient
faults retried with backoff, rejections not); ``run_remote_stage`` submits it to a work pool's worker and
merges what it wrote. ``nothing_changed``: one ``dvc status`` before any stage starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from frugalml.contracts import (
    CostEntry,
    StageStatus,
    status_file,
)
from frugalml.core.errors import FrugalError, Rejected, StorageError, TransientStorageError
from frugalml.core.lineage import git_commit
from frugalml.core.procs import dvc_env
from frugalml.core.store import Store
from frugalml.runs import dispatch


class StageFailed(FrugalError):
    """A stage ended with an unexpected error (exit code 1)."""


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    wall_s: float
    cost: CostEntry | None = None  # this run's cost entry of the stage; None when it did not run
    failed: bool = False
    pool: str | None = None  # orchestration.pools: the work pool it ran on (None: here)
    interrupted: list[CostEntry] = field(default_factory=list)  # attempts a SIGTERM stopped
    lost: int = 0  # attempts whose worker died without a result (no ledger: their cost is unknown)


def _env(run_id: str) -> dict:
    return dvc_env({"FRUGALML_RUN_ID": run_id, "PYTHONUNBUFFERED": "1"})  # DVC's shell finds this venv's python


def _dvc(args: list[str], run_id: str, echo: bool = True, cwd: Path | None = None, on_start=None) -> tuple[int, str]:
    """``dvc <args>``, its output echoed. ``on_start``: given the process, started in its own
    process group (for a caller that passes signals on to the whole group)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(run_id),
        bufsize=1,
        cwd=cwd,
        start_new_session=on_start is not None,
    )
    if on_start is not None:
        on_start(proc)
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        if echo:
            sys.stderr.write(line)
    return proc.wait(), "\n".join(tail)


# DVC reports faults only as text. Access and configuration errors are never transient.
_PERMANENT = (
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "403",
    "Unable to locate credentials",
    "config file error",
    "is not a valid remote",
)


_TRANSIENT = (
    "Could not connect",
    "ConnectTimeout",
    "EndpointConnectionError",
    "Connection refused",
    "Read timeout",
    "ReadTimeout",
    "ConnectionClosedError",
    "Connection reset",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "503",
    "502",
    "500 Internal",
)


def is_transient_dvc_failure(output: str) -> bool:
    """True when DVC's output shows a fault worth retrying (the store unreachable or 5xx) and
    no access or configuration error."""
    if any(p in output for p in _PERMANENT):
        return False
    return any(t in output for t in _TRANSIENT)


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
    status = status_file(stage)
    status.unlink(missing_ok=True)
    t0 = time.perf_counter()
    code, tail = _dvc(["repro", "--single-item", stage], run_id)
    wall = time.perf_counter() - t0
    if code != 0:
        if status.exists():
            st = StageStatus.read(status)
            if st.exit_code == 3:
                raise Rejected(st.message)
            if st.transient:
                raise TransientStorageError(f"stage {stage}: {st.message}")
            raise StageFailed(f"stage {stage} failed: {st.message}")
        if is_transient_dvc_failure(tail):
            raise TransientStorageError(f"stage {stage}: DVC could not reach the object store:\n{tail}")
        raise StageFailed(f"stage {stage}: dvc repro failed (exit {code}):\n{tail}")
    cost = CostEntry.for_stage(stage)
    ran = cost is not None and cost.run_id == run_id
    return StageOutcome(stage, ran, wall, cost if ran else None)


def _wait_for(flow_run_id, stage: str, pool: str, submit_timeout_s: float):
    """The final state of a remote stage's flow run. One that no worker picks up within
    ``submit_timeout_s`` is cancelled (no orphaned flow run) and the stage fails, naming the pool."""
    from prefect.client.orchestration import get_client  # lazy: Prefect client, only for remote stages
    from prefect.states import Cancelled

    submitted = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if (state is None or state.is_scheduled()) and time.monotonic() - submitted > submit_timeout_s:
                client.set_flow_run_state(flow_run_id, Cancelled(message="no worker picked it up"), force=True)
                raise StageFailed(
                    f"stage {stage}: no worker of work pool {pool!r} picked it up within {submit_timeout_s:g} s "
                    f"(orchestration.submit_timeout_s); start one: prefect worker start --pool {pool}"
                )
            time.sleep(1.0)


def _submit(stage: str, run_id: str, pool: str, cfg):
    from prefect.deployments import run_deployment  # lazy: only for remote stages
    from prefect.exceptions import ObjectNotFound

    name = f"{dispatch.FLOW_NAME}/{pool}"
    params = {
        "stage": stage,
        "run_id": run_id,
        "commit": git_commit(),
        "repo_url": dispatch.redact(dispatch.repo_url(cfg.orchestration.git_remote)),  # no token in Prefect's DB
        "pool": pool,
        "storage": cfg.storage.model_dump(),
    }
    try:
        return run_deployment(name, parameters=params, timeout=0, tags=["frugalml", f"run:{run_id}"])
    except ObjectNotFound:
        raise StageFailed(
            f"stage {stage}: no deployment {name} for work pool {pool!r}; register it "
            f"(infra/prefect.yaml: `prefect deploy --name {pool}`)"
        ) from None


_INTERRUPTED: dict[tuple[str, str], list[CostEntry]] = {}  # (run, stage) -> the cost of attempts SIGTERM stopped


_LOST: dict[tuple[str, str], int] = {}  # (run, stage) -> attempts whose worker died without a result


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def run_remote_stage(stage: str, run_id: str, pool: str, cfg) -> StageOutcome:
    """``stage`` on a worker of ``pool`` (``flows/remote_stage.py``): its deps pushed and sent,
    the flow run awaited, its dvc.lock entry and outputs merged, its outs pulled."""
    t0 = time.perf_counter()
    if nothing_changed.fn([stage], run_id):
        return StageOutcome(stage, False, time.perf_counter() - t0, pool=pool)
    cached, _ = dispatch.inputs_of(stage)
    if cached:
        _checked_dvc(["push", *cached], run_id, f"stage {stage}: pushing its inputs")
    store = Store.from_config(cfg.storage)
    dispatch.send_inputs(store, run_id, stage)
    flow_run = _submit(stage, run_id, pool, cfg)
    state = _wait_for(flow_run.id, stage, pool, cfg.orchestration.submit_timeout_s)
    if state.is_cancelled():  # someone cancelled it in Prefect: not a fault to retry
        raise StageFailed(f"stage {stage} on work pool {pool} was cancelled: {state.message}")
    try:
        result = dispatch.merge(store, run_id, stage)
    except StorageError:
        if state.is_completed():
            raise
        if state.is_crashed():  # the worker's process died without a word (a lost node): run it again
            _LOST[(run_id, stage)] = _LOST.get((run_id, stage), 0) + 1
            raise TransientStorageError(f"stage {stage} on work pool {pool} crashed: {state.message}") from None
        raise StageFailed(f"stage {stage} on work pool {pool}: {state.name}: {state.message}") from None
    if result.transient:  # e.g. a spot notice: the retry resumes from the checkpoint in the store
        lost = CostEntry.for_stage(stage)
        _INTERRUPTED.setdefault((run_id, stage), []).extend([lost] if lost and lost.run_id == run_id else [])
        raise TransientStorageError(f"stage {stage} on work pool {pool} was interrupted: {result.message}")
    if result.exit_code == 3:
        raise Rejected(result.message)
    if result.exit_code != 0 or not state.is_completed():
        raise StageFailed(f"stage {stage} on work pool {pool} failed: {result.message or state.message}")
    _checked_dvc(["pull", stage], run_id, f"stage {stage}: pulling its outputs")
    cost = CostEntry.for_stage(stage)
    ran = cost is not None and cost.run_id == run_id
    interrupted = _INTERRUPTED.pop((run_id, stage), [])
    lost = _LOST.pop((run_id, stage), 0)
    return StageOutcome(
        stage, ran, time.perf_counter() - t0, cost if ran else None, pool=pool, interrupted=interrupted, lost=lost
    )


def _checked_dvc(args: list[str], run_id: str, what: str, cwd: Path | None = None, echo: bool = False) -> None:
    code, tail = _dvc(args, run_id, echo=echo, cwd=cwd)
    if code != 0:
        error = TransientStorageError if is_transient_dvc_failure(tail) else StageFailed
        raise error(f"{what}: dvc {args[0]} failed (exit {code}):\n{tail}")


@task
def nothing_changed(stages: list[str], run_id: str) -> bool:
    """One ``dvc status`` over the stages (and the source data): True when all are up to date."""
    code, out = _dvc(["status", "--json", *stages], run_id, echo=False)
    if code != 0:
        return False  # let the stages themselves report the fault (and be retried)
    try:
        return json.loads(out.strip().splitlines()[-1]) == {}
    except (ValueError, IndexError):
        return False


def _failed_outcome(stage: str, run_id: str, pool: str) -> StageOutcome:
    """The cost of a stage that ended in rejection or failure (it still ran and cost money)."""
    cost = CostEntry.for_stage(stage)
    ran = cost is not None and cost.run_id == run_id
    where = None if pool == "local" else pool
    return StageOutcome(stage, ran, cost.wall_s if ran else 0.0, cost if ran else None, failed=True, pool=where)

"""One pipeline stage on a Prefect work pool's worker: the flow behind ``frugalml-stage/<pool>``.

The orchestrating run (``flows/pipeline.py``, ``orchestration.pools``) starts it with
``run_deployment``. In a fresh folder under the worker's working directory it materializes the
workspace at the run's commit (``git clone`` + ``checkout``, the run's params.yaml and dvc.lock,
``dvc pull`` of the stage's deps), runs ``dvc repro --single-item <stage>``, pushes the outs to the
DVC remote and publishes the stage's dvc.lock entry, metrics and cost file under
``runs/<run_id>/stages/<stage>/``; the folder is removed afterwards, also on failure, and by the
next flow run on this worker when its process was killed outright. The work is
``frugalml.runs.dispatch``; the S3 endpoint and credentials come from the worker's environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from prefect import flow

from flows.stages import _checked_dvc, _dvc
from frugalml.contracts import RemoteStage, StageStatus, status_file
from frugalml.core import config
from frugalml.core.config import StorageConfig
from frugalml.core.errors import FrugalError
from frugalml.core.store import Store, resolve_settings
from frugalml.data.dvcconf import write_local_config
from frugalml.runs import dispatch

WORK = Path(".frugalml") / "remote"


@contextmanager
def _sigterm_reaches_the_stage():
    """SIGTERM to this process (Kubernetes signals a pod's first process only: a spot notice, a
    drain; Prefect's cancel) is passed on to the stage's process group, so that training stops at
    the next step with its checkpoint and ledger (exit 75) instead of being orphaned or killed
    later without them. Once the stage has ended, Prefect's own handler gets the signal too, so a
    cancel still ends as cancelled. Wraps the stage and the publication of its result (which the
    orchestrating run needs to retry it). Yields the ``on_start`` callback for ``_dvc``."""
    if threading.current_thread() is not threading.main_thread():  # no handler outside the main thread
        yield None
        return
    group: list[int] = []
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for pid in group:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield lambda proc: group.append(proc.pid)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        if callable(previous):
            previous(signal.SIGTERM, None)
        else:  # SIG_DFL (terminate) or SIG_IGN, as they would have
            os.kill(os.getpid(), signal.SIGTERM)


def _sweep_orphans() -> None:
    """Remove the copies of flow runs whose process died without cleaning up (killed outright):
    each copy has ``<copy>.pid`` beside it, naming the process that owns it."""
    for pidfile in WORK.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), 0)
            continue  # its flow run is still at work
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue  # unreadable, or a process we may not signal: leave it
        shutil.rmtree(WORK / pidfile.name.removesuffix(".pid"), ignore_errors=True)
        pidfile.unlink(missing_ok=True)


def _repro(work: Path, stage: str, run_id: str, on_start) -> tuple[int, str, bool]:
    """(exit code, message, transient) of ``dvc repro --single-item <stage>`` in ``work``."""
    code, tail = _dvc(["repro", "--single-item", stage], run_id, cwd=work, on_start=on_start)
    status = work / status_file(stage)
    if code != 0 and status.exists():
        st = StageStatus.read(status)
        return st.exit_code or code, st.message, st.transient
    return code, "" if code == 0 else tail, False


@flow(name=dispatch.FLOW_NAME, log_prints=True)
def remote_stage(stage: str, run_id: str, commit: str, repo_url: str, pool: str, storage: dict) -> dict:
    """Run ``stage`` of run ``run_id`` at ``commit`` of ``repo_url`` here; publish its result."""
    work = WORK / f"{run_id}-{stage}-{uuid.uuid4().hex[:6]}"
    work.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans()
    pidfile = WORK / f"{work.name}.pid"
    pidfile.write_text(str(os.getpid()))
    store = Store.from_config(StorageConfig(**storage))
    result = RemoteStage(stage=stage, run_id=run_id, pool=pool, commit=commit, worker=socket.gethostname(), exit_code=0)
    try:
        t0 = time.perf_counter()
        dispatch.materialize(store, run_id, stage, repo_url, commit, work)
        cfg = config.load(work / "params.yaml")
        write_local_config(cfg, resolve_settings(cfg.storage), work)
        cached, _ = dispatch.inputs_of(stage, work)
        if cached:
            _checked_dvc(["pull", *cached], run_id, f"stage {stage} on the worker: pulling its deps", work, echo=True)
        t1 = time.perf_counter()
        with _sigterm_reaches_the_stage() as on_start:
            result.exit_code, result.message, result.transient = _repro(work, stage, run_id, on_start)
            t2 = time.perf_counter()
            if result.exit_code == 0:
                _checked_dvc(["push", stage], run_id, f"stage {stage} on the worker: pushing its outs", work, echo=True)
            result.materialize_s, result.repro_s = round(t1 - t0, 2), round(t2 - t1, 2)
            result.publish_s = round(time.perf_counter() - t2, 2)
            dispatch.publish(store, work, result)
            print(
                f"{stage} on pool {pool} ({result.worker}): exit {result.exit_code}; "
                f"materialize {result.materialize_s} s, repro {result.repro_s} s, push {result.publish_s} s"
            )
        if result.exit_code != 0:
            raise FrugalError(f"stage {stage} on pool {pool}: {result.message}")
        return result.model_dump()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        pidfile.unlink(missing_ok=True)

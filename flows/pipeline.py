"""The training pipeline as a Prefect flow: one task per DVC stage, then dvc push, then the record.

Each task runs ``dvc repro --single-item <stage>``, so dvc.lock is updated exactly as by
``dvc repro`` and an up-to-date stage is skipped. When one ``dvc status`` says that nothing
changed at all, no stage process is started: a nightly run over unchanged data and params
costs only that check. Transient faults (the object store not answering) are retried with
backoff; rejections (validation failed, gate rejected) are not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from frugalml.contracts import (
    CostEntry,
    CostMetrics,
    DvcPush,
    EvalReport,
    GateDecision,
    IngestReport,
    PackageReport,
    Promotion,
    RunRecord,
    StageRow,
    StageStatus,
    StorageUse,
    ValidationReport,
    VariantsReport,
    status_file,
)
from frugalml.core import config
from frugalml.core.config import OrchestrationConfig
from frugalml.core.costs import price
from frugalml.core.errors import FrugalError, Rejected, StorageError, TransientStorageError
from frugalml.core.lineage import git_commit, git_dirty
from frugalml.core.locks import RUN_LOCK, workspace_lock
from frugalml.core.procs import dvc_env
from frugalml.core.registry import Registry, write_champion
from frugalml.core.store import Store, resolve_settings
from frugalml.data.dvcconf import write_local_config
from frugalml.runs import dispatch
from frugalml.runs.records import STAGES, new_run_id, write_record


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


def _remote_objects(store: Store) -> dict[str, int]:
    return {o["key"]: o["size"] for o in store.list("dvc/")}


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def dvc_push(cfg_storage, run_id: str) -> DvcPush:
    """``dvc push``, with what it added to the remote (a listing before and after, by our client)."""
    store = Store.from_config(cfg_storage)
    t0 = time.perf_counter()
    before = _remote_objects(store)
    code, tail = _dvc(["push", "--quiet"], run_id, echo=False)
    if code != 0:
        if is_transient_dvc_failure(tail):
            raise TransientStorageError(f"dvc push failed:\n{tail}")
        raise StageFailed(f"dvc push failed (not retried: not a transient fault):\n{tail}")
    after = _remote_objects(store)
    new = {k: v for k, v in after.items() if k not in before}
    return DvcPush(
        wall_s=round(time.perf_counter() - t0, 3),
        objects=len(new),
        bytes=sum(new.values()),
        remote_objects=len(after),
        remote_bytes=sum(after.values()),
    )


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def record_run(cfg_storage, run_id: str, record: RunRecord) -> str:
    return write_record(Store.from_config(cfg_storage), run_id, record, record_files())


def record_files() -> list[Path]:
    """The workspace files a run record carries (under runs/<run_id>/)."""
    files = [Path("params.yaml"), Path("dvc.lock")]
    files += sorted(Path("metrics").glob("*.json")) + sorted(Path("costs").glob("*.json"))
    files += sorted(Path("plots").glob("*.csv"))
    own = {Path("reports/run.html"), Path("reports/sweep.html")}  # reports of a run or sweep: not inputs of the next
    files += (
        sorted(p for p in Path("reports").rglob("*") if p.is_file() and p not in own)
        if Path("reports").exists()
        else []
    )
    return [f for f in files if f.is_file()]


def stored_by_run(cfg, run_id: str, outcomes: list[StageOutcome], push: DvcPush) -> dict[str, int]:
    """Bytes of every object this run leaves in the bucket, by kind: what DVC pushed, the
    checkpoints still kept, the bento, and the run record's own files. Listed, not estimated
    from uploads: deleted checkpoints cost nothing per month."""
    kinds = {
        "dvc": push.bytes,
        "checkpoints": 0,
        "bento": 0,
        "run_record": sum(f.stat().st_size for f in record_files()),
    }
    try:
        kinds["checkpoints"] = sum(o["size"] for o in Store.from_config(cfg.storage).list(f"checkpoints/{run_id}/"))
    except FrugalError:
        pass
    if any(o.stage == "package" and o.ran for o in outcomes) and PackageReport.PATH.exists():
        kinds["bento"] = PackageReport.read().bento_bytes
    return kinds


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def auto_promote(cfg, version: str, alias: str) -> Promotion:
    """``promotion.auto``: point the alias at the version this run packaged (gate accepted)."""

    Registry(Store.from_config(cfg.storage), cfg.model.name).promote(
        version, alias, reason="promotion.auto", write_id=f"auto-{alias}-{version}"
    )
    return Promotion(alias=alias, version=version)


def _failed_outcome(stage: str, run_id: str, pool: str) -> StageOutcome:
    """The cost of a stage that ended in rejection or failure (it still ran and cost money)."""
    cost = CostEntry.for_stage(stage)
    ran = cost is not None and cost.run_id == run_id
    where = None if pool == "local" else pool
    return StageOutcome(stage, ran, cost.wall_s if ran else 0.0, cost if ran else None, failed=True, pool=where)


def push_row(push: DvcPush, costs) -> StageRow:
    """The DVC push as a row of the cost table: its wall time and one PUT per object it added."""
    usd = price({"wall_s": push.wall_s, "s3_requests_put": push.objects}, costs)["total_usd"]
    status = "ran" if push.objects else "nothing new"
    return StageRow(stage="dvc push", status=status, wall_s=round(push.wall_s, 2), usd=usd, bytes=push.bytes)


def orchestration_row(wall_s: float, costs) -> StageRow:
    """The flow's own time (Prefect, ``dvc status``/``repro`` checks, process starts): a real cost too."""
    return StageRow(
        stage="orchestration", status="ran", wall_s=round(wall_s, 2), usd=price({"wall_s": wall_s}, costs)["total_usd"]
    )


def _billed(e: CostEntry, pool: str | None, o: OrchestrationConfig) -> tuple[float, float]:
    """(billed, on-demand) USD of a cost entry. On a pool with a node price for the entry's capacity
    (``orchestration.pool_usd_per_hour``, ``pool_spot_usd_per_hour``) the node's hour replaces the
    CPU and GPU share of the price sheet. On-demand: the work kept, on on-demand capacity."""
    on_demand_rate = o.pool_usd_per_hour.get(pool or "")
    rate = o.pool_spot_usd_per_hour.get(pool or "") if e.capacity == "spot" else on_demand_rate
    rest = e.total_usd - e.compute_usd - e.gpu_usd  # S3 requests, labels
    billed = e.total_usd if rate is None else rest + rate * e.wall_s / 3600
    on_demand = e.on_demand_usd if e.on_demand_usd is not None else e.total_usd
    if on_demand_rate is not None:
        on_demand = rest + on_demand_rate * max(e.wall_s - e.lost_s, 0.0) / 3600
    return billed, on_demand


def cost_rows(outcomes: list[StageOutcome], orchestration: OrchestrationConfig | None = None) -> list[StageRow]:
    """A row per stage, at its capacity's prices, with its interrupted attempts and what the same
    work costs on demand. A stage on a work pool with a node price is billed the node's hour for
    its wall time, instead of its CPU and GPU share of the price sheet."""
    o_cfg = orchestration or OrchestrationConfig()
    rows = []
    for o in outcomes:
        c = o.cost or CostEntry(stage=o.stage, run_id="", wall_s=0.0)
        usd = interrupted = on_demand = lost_usd = 0.0
        for e in [*o.interrupted, c]:  # every attempt: the stopped ones, then the one that finished
            billed, kept_on_demand = _billed(e, o.pool, o_cfg)
            usd += billed
            interrupted += billed if e is not c else 0.0
            on_demand += kept_on_demand
            lost_usd += billed * min(e.lost_s / e.wall_s, 1.0) if e.wall_s else 0.0
        rows.append(
            StageRow(
                stage=o.stage,
                status="failed" if o.failed else "ran" if o.ran else "up to date",
                wall_s=round(c.wall_s, 2),
                usd=round(usd, 6),
                pool=o.pool,
                interruptions=len(o.interrupted),
                lost_attempts=o.lost,
                interrupted_usd=round(interrupted, 6),
                capacity=c.capacity,
                lost_s=round(sum(e.lost_s for e in [*o.interrupted, c]), 2),
                lost_usd=round(lost_usd, 6),
                on_demand_usd=round(on_demand, 6),
                check_wall_s=round(o.wall_s, 2),
                cpu_s=round(c.cpu_s, 2),
                peak_rss_mb=c.peak_rss_mb,
                labeling_usd=c.labeling_usd,
                labeled_images=c.labeled_images,
                s3_bytes_up=c.s3_bytes_up,
                s3_bytes_down=c.s3_bytes_down,
                gpu_s=c.gpu_s,
                gpu_energy_j=c.gpu_energy_j,
                weights_from=c.weights_from,  # pretrained weights: cache, mirror or download
                weights_download_bytes=c.weights_download_bytes if c.weights_from else None,
                stopped=c.stopped,
                image_epochs=c.image_epochs,
                startup_s=c.startup_s,
            )
        )
    return rows


def _gate_rejection() -> str | None:
    """The reason the last gate decision rejected the model, or None when it accepted."""
    gate = GateDecision.read()
    if gate.decision == "accept":
        return None
    return f"gate rejected the model (failed: {', '.join(gate.failed)})"


def write_cost_metrics(record: RunRecord) -> CostMetrics:
    """``metrics/costs.json`` from the run record: what ``dvc metrics diff`` compares between two runs."""
    metrics = CostMetrics(
        total_usd=record.total_usd,
        labeling_usd=record.labeling_usd,
        usd={r.stage: r.usd for r in record.stages},
        storage_usd_per_month=record.storage.usd_per_month,
    )
    metrics.write()
    return metrics


def _artifacts(run_id: str, rows: list[StageRow], gate: GateDecision | None) -> None:
    """Prefect artifacts: data summary, validation result, metrics, variants, gate decision, cost table."""
    ingest = IngestReport.read_if_exists()
    if ingest is not None:
        c = ingest.counts
        table = [{"key": "source", "value": ingest.source}, {"key": "source kind", "value": ingest.source_kind}]
        table += [{"key": k, "value": v} for k, v in c.model_dump().items() if not isinstance(v, dict)]
        table += [{"key": f"class {name}", "value": n} for name, n in c.per_class.items()]
        create_table_artifact(key="data-summary", table=table, description=f"Prepared dataset, run {run_id}")
    validation = ValidationReport.read_if_exists()
    if validation is not None:
        lines = [f"**Validation: {'passed' if validation.success else 'FAILED'}**", ""]
        lines += [
            f"- images: {validation.images}",
            f"- failed: {', '.join(validation.failed) or 'none'}",
            f"- warnings: {', '.join(validation.warnings) or 'none'}",
            f"- report: {validation.html_report}",
        ]
        create_markdown_artifact(key="validation-result", markdown="\n".join(lines))
    ev = EvalReport.read_if_exists()
    if ev is not None:
        table = [{"metric": k, "value": v} for k, v in ev.model_dump().items() if isinstance(v, (int, float))]
        create_table_artifact(key="metrics", table=table, description=f"Evaluation on the test split, run {run_id}")
    variants = VariantsReport.read_if_exists()
    if variants is not None:
        table = [v.model_dump(mode="json", exclude_none=True) for v in variants.variants]
        create_table_artifact(
            key="variants", table=table, description=f"Serving variants on the test split, run {run_id}: {variants.why}"
        )
    table = [r.model_dump(mode="json", exclude_none=True) for r in rows]
    create_table_artifact(key="cost-table", table=table, description=f"Per-stage cost of run {run_id}")
    if gate:
        lines = [f"**Decision: {gate.decision}**", "", "| check | value | threshold | passed |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {c.value} | {c.op} {c.threshold} | {c.passed} |" for c in gate.checks]
        create_markdown_artifact(key="gate-decision", markdown="\n".join(lines))


def _track_champion(cfg) -> None:
    """models/champion.json names the production version evaluate compares with (a DVC dep)."""

    try:
        write_champion(Registry(Store.from_config(cfg.storage), cfg.model.name))
    except TransientStorageError:
        raise
    except FrugalError:
        pass  # no store configured yet: the stages report that themselves


def _prepare(run_id: str, overrides: list[str] | None, until: str | None):
    if overrides:
        config.write_overrides("params.yaml", overrides)
    cfg = config.load()
    write_local_config(cfg, resolve_settings(cfg.storage))
    _track_champion(cfg)
    stages = list(STAGES[: STAGES.index(until) + 1] if until else STAGES)
    return cfg, stages


def _build_record(
    cfg,
    run_id: str,
    overrides,
    until,
    outcomes: list[StageOutcome],
    status: str,
    message: str,
    push: DvcPush,
    promoted: Promotion | None,
    t0: float,
    flow_run_id: str,
) -> RunRecord:
    rows = cost_rows(outcomes, cfg.orchestration) + ([push_row(push, cfg.costs)] if push.wall_s else [])
    own = time.perf_counter() - t0 - sum(r.wall_s for r in rows)
    rows.append(orchestration_row(max(0.0, own), cfg.costs))
    ran = {o.stage for o in outcomes}
    # What this run added to the bucket (stage uploads: checkpoints, bento, registry; DVC push),
    # priced per month at costs.prices.usd_per_gb_month for as long as it is kept.
    by_kind = stored_by_run(cfg, run_id, outcomes, push)
    stored = sum(by_kind.values())
    record = RunRecord(
        run_id=run_id,
        status=status,
        message=message,
        no_change=not any(o.ran for o in outcomes) and status == "succeeded",
        flow_run_id=flow_run_id,
        git_commit=git_commit(),
        git_dirty=git_dirty(),
        overrides=overrides or [],
        until=until,
        params=config.dump(cfg),
        stages=rows,
        total_usd=round(sum(r.usd for r in rows), 6),
        dvc_push=push,
        storage=StorageUse(
            stored_bytes=stored,
            by_kind=by_kind,
            usd_per_month=round(stored / 1e9 * cfg.costs.prices.usd_per_gb_month, 6),
        ),
        wall_s=round(time.perf_counter() - t0, 2),
        gate=GateDecision.read() if "gate" in ran and GateDecision.PATH.exists() else None,
        variants=VariantsReport.read() if "compress" in ran and VariantsReport.PATH.exists() else None,
        package=PackageReport.read() if "package" in ran and PackageReport.PATH.exists() else None,
        promoted=promoted,
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_cost_metrics(record)
    return record


def run_if_unchanged(run_id: str, overrides: list[str] | None = None, until: str | None = None) -> RunRecord | None:
    """Outside Prefect: when one ``dvc status`` says nothing changed, record "no change" and return it.

    ``frugalml run`` calls this first, so a run over unchanged data and params costs one
    check and no orchestrator start. Returns None when there is work (run the flow).
    """
    t0 = time.perf_counter()
    cfg, stages = _prepare(run_id, overrides, until)
    if not nothing_changed.fn(stages, run_id):
        return None
    outcomes = [StageOutcome(stage, False, 0.0) for stage in stages]
    record = _build_record(cfg, run_id, overrides, until, outcomes, "succeeded", "", DvcPush(), None, t0, "")
    record.orchestrator = "none: dvc status found nothing to run"
    record.record_uri = record_run.fn(cfg.storage, run_id, record)
    run_report(cfg.storage, record)
    return record


def run_report(cfg_storage, record: RunRecord) -> Path | None:
    """``reports/run.html`` and ``runs/<id>/report.html``; a report that cannot be written is said
    and the run stands (it is recorded already)."""
    from frugalml.runs.report import write_run_report

    try:
        return write_run_report(record, Store.optional(cfg_storage, tolerate_transient=True))
    except Exception as exc:  # the run is recorded: a chart or upload problem must not fail it
        from frugalml.core.console import err

        err.print(f"run report not written ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})")
        return None


@flow(name="frugalml-training", log_prints=True)
def training_pipeline(
    run_id: str | None = None,
    overrides: list[str] | None = None,
    until: str | None = None,
    checked_changed: bool = False,
) -> RunRecord:
    """Run the stages in order; returns the run record (status: succeeded, rejected or failed).

    ``overrides`` (KEY=VALUE) are written to params.yaml first, as ``frugalml run --set`` does.
    ``checked_changed``: the caller's own ``dvc status`` just found work (skip the check).
    """

    # A scheduled run queues behind a manual one in the same workspace (and vice versa).
    with workspace_lock(
        RUN_LOCK,
        "frugalml run",
        wait=True,
        on_wait=lambda h: get_run_logger().info("waiting for the run in progress (%s)", h),
    ):
        return _pipeline(run_id, overrides, until, checked_changed)


def _pipeline(run_id: str | None, overrides: list[str] | None, until: str | None, checked_changed: bool) -> RunRecord:
    from prefect.runtime import flow_run  # lazy: Prefect: ~2 s to import; only orchestration pays for it

    logger = get_run_logger()
    t0 = time.perf_counter()
    run_id = run_id or new_run_id()
    cfg, stages = _prepare(run_id, overrides, until)
    outcomes: list[StageOutcome] = []
    status, message = "succeeded", ""
    if any(cfg.orchestration.pool_for(s) != "local" for s in stages):  # before any stage runs
        dispatch.check_reachable(dispatch.repo_url(cfg.orchestration.git_remote), git_commit())
    unchanged = False if checked_changed else nothing_changed(stages, run_id)
    if unchanged:
        logger.info("dvc status: every stage is up to date; nothing to run")
    for stage in stages:
        if unchanged:
            outcomes.append(StageOutcome(stage, False, 0.0))
            continue
        if stage == "package" and outcomes and (rejection := _gate_rejection()):
            status, message = "rejected", rejection
            break
        pool = cfg.orchestration.pool_for(stage)
        try:
            if pool == "local":
                outcomes.append(run_stage.with_options(name=stage)(stage, run_id))
            else:
                outcomes.append(run_remote_stage.with_options(name=f"{stage}@{pool}")(stage, run_id, pool, cfg))
        except FrugalError as exc:
            status = "rejected" if isinstance(exc, Rejected) else "failed"
            message = str(exc)
            outcomes.append(_failed_outcome(stage, run_id, pool))
            break
    if status == "succeeded" and "package" not in stages and any(o.stage == "gate" for o in outcomes):
        if rejection := _gate_rejection():  # --until gate: the decision is the outcome
            status, message = "rejected", rejection
    promoted = None
    push = DvcPush()
    # A failure after the stages (the DVC push, the auto-promotion) still gets a run record:
    # a model may already be registered, and the record says what was done.
    try:
        if status != "failed" and not unchanged:
            push = dvc_push(cfg.storage, run_id)
        packaged = next((o for o in outcomes if o.stage == "package" and o.ran), None)
        if status == "succeeded" and packaged and cfg.promotion.auto != "none":
            promoted = auto_promote(cfg, PackageReport.read().version, cfg.promotion.auto)
    except FrugalError as exc:
        status, message = "failed", f"{exc.__class__.__name__}: {exc}"
        logger.error("run %s: %s", run_id, message)
    record = _build_record(
        cfg,
        run_id,
        overrides,
        until,
        outcomes,
        status,
        message,
        push,
        promoted,
        t0,
        str(flow_run.id) if flow_run.id else "",
    )
    record.orchestrator = "prefect"
    record.record_uri = record_run(cfg.storage, run_id, record)
    _artifacts(run_id, record.stages, record.gate)
    report = run_report(cfg.storage, record)
    if report is not None:
        create_link_artifact(
            key="run-report",
            link=report.resolve().as_uri(),
            link_text=f"report of run {run_id}",
            description=f"One HTML file, charts inlined: opens offline. In the store: runs/{run_id}/report.html",
        )
    logger.info("run %s %s; record at %s", run_id, status, record.record_uri)
    return record

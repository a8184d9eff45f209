"""After the stages: ``dvc push``, the bill (one row per stage, the push and the orchestration), the
run record in the store, its Prefect artifacts and its HTML report."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.stages import StageFailed, StageOutcome, _dvc, _retry_transient, is_transient_dvc_failure
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
    StorageUse,
    ValidationReport,
    VariantsReport,
)
from frugalml.core import config
from frugalml.core.config import OrchestrationConfig
from frugalml.core.costs import price
from frugalml.core.errors import FrugalError, TransientStorageError
from frugalml.core.lineage import git_commit, git_dirty
from frugalml.core.store import Store
from frugalml.runs.records import write_record


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

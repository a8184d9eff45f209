"""The training pipeline as a Prefect flow: one task per DVC stage, then dvc push, then the record.

Each task runs ``dvc repro --single-item <stage>``, so dvc.lock is updated exactly as by
``dvc repro`` and an up-to-date stage is skipped. When one ``dvc status`` says that nothing
changed at all, no stage process is started: a nightly run over unchanged data and params
costs only that check. Transient faults (the object store not answering) are retried with
backoff; rejections (validation failed, gate rejected) are not.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact

from flows.record import _artifacts, _build_record, dvc_push, record_run, run_report
from flows.stages import StageOutcome, _failed_outcome, _retry_transient, nothing_changed, run_remote_stage, run_stage
from frugalml.contracts import (
    DvcPush,
    GateDecision,
    PackageReport,
    Promotion,
    RunRecord,
)
from frugalml.core import config
from frugalml.core.errors import FrugalError, Rejected, TransientStorageError
from frugalml.core.lineage import git_commit
from frugalml.core.locks import RUN_LOCK, workspace_lock
from frugalml.core.registry import Registry, write_champion
from frugalml.core.store import Store, resolve_settings
from frugalml.data.dvcconf import write_local_config
from frugalml.runs import dispatch
from frugalml.runs.records import STAGES, new_run_id


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)
def auto_promote(cfg, version: str, alias: str) -> Promotion:
    """``promotion.auto``: point the alias at the version this run packaged (gate accepted)."""

    Registry(Store.from_config(cfg.storage), cfg.model.name).promote(
        version, alias, reason="promotion.auto", write_id=f"auto-{alias}-{version}"
    )
    return Promotion(alias=alias, version=version)


def _gate_rejection() -> str | None:
    """The reason the last gate decision rejected the model, or None when it accepted."""
    gate = GateDecision.read()
    if gate.decision == "accept":
        return None
    return f"gate rejected the model (failed: {', '.join(gate.failed)})"


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


def _run_stages(cfg, stages: list[str], run_id: str, unchanged: bool) -> tuple[list[StageOutcome], str, str]:
    """Each stage in order, here or on its work pool, until one fails or is rejected (the package
    stage is not started after a gate that rejected). Returns the outcomes, the status and why."""
    outcomes: list[StageOutcome] = []
    status, message = "succeeded", ""
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
    return outcomes, status, message


def _after_stages(cfg, run_id: str, outcomes: list[StageOutcome], status: str, message: str, unchanged: bool):
    """``dvc push`` and the auto-promotion. A failure here still gets a run record (a model may
    already be registered, and the record says what was done): it becomes the run's status."""
    logger = get_run_logger()
    promoted = None
    push = DvcPush()
    try:
        if status != "failed" and not unchanged:
            push = dvc_push(cfg.storage, run_id)
        packaged = next((o for o in outcomes if o.stage == "package" and o.ran), None)
        if status == "succeeded" and packaged and cfg.promotion.auto != "none":
            promoted = auto_promote(cfg, PackageReport.read().version, cfg.promotion.auto)
    except FrugalError as exc:
        status, message = "failed", f"{exc.__class__.__name__}: {exc}"
        logger.error("run %s: %s", run_id, message)
    return status, message, push, promoted


def _pipeline(run_id: str | None, overrides: list[str] | None, until: str | None, checked_changed: bool) -> RunRecord:
    from prefect.runtime import flow_run  # lazy: Prefect: ~2 s to import; only orchestration pays for it

    logger = get_run_logger()
    t0 = time.perf_counter()
    run_id = run_id or new_run_id()
    cfg, stages = _prepare(run_id, overrides, until)
    if any(cfg.orchestration.pool_for(s) != "local" for s in stages):  # before any stage runs
        dispatch.check_reachable(dispatch.repo_url(cfg.orchestration.git_remote), git_commit())
    unchanged = False if checked_changed else nothing_changed(stages, run_id)
    if unchanged:
        logger.info("dvc status: every stage is up to date; nothing to run")
    outcomes, status, message = _run_stages(cfg, stages, run_id, unchanged)
    status, message, push, promoted = _after_stages(cfg, run_id, outcomes, status, message, unchanged)
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

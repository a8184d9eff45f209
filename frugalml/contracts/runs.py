"""A run's files: each stage's cost entry (``costs/<stage>.json``) and the bill, a stage's status,
the run record in the store, and a stage run on a remote work pool."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from frugalml.contracts.base import COST_METRICS, COSTS_DIR, STAGES, STATUS_DIR, Contract, cost_file
from frugalml.contracts.ship import GateDecision, PackageReport, VariantsReport


class CostEntry(Contract):
    """``costs/<stage>.json``: what a stage used, metered by ``CostMeter``, priced by ``costs.price``."""

    PATH: ClassVar[Path] = COSTS_DIR / "stage.json"
    stage: str
    run_id: str
    wall_s: float
    startup_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    s3_requests_put: int = 0
    s3_requests_get: int = 0
    s3_bytes_up: int = 0
    s3_bytes_down: int = 0
    labeled_images: int = 0
    stored_bytes: int = 0
    gpu_s: float = 0.0
    gpu_energy_j: float | None = None
    weights_from: Literal["cache", "mirror", "package", "download"] | None = None
    weights_download_bytes: int = 0
    stopped: Literal["completed", "early_stopping", "budget", "pruned"] | None = None  # train: why it ended
    image_epochs: int = 0  # train: images x epochs run (what estimate divides the cost by)
    features_cached: int = 0  # train: images whose backbone features came from the feature cache
    compute_usd: float = 0.0
    gpu_usd: float = 0.0
    s3_requests_usd: float = 0.0
    labeling_usd: float = 0.0
    storage_usd_per_month: float = 0.0
    total_usd: float = 0.0
    capacity: Literal["on_demand", "spot"] = "on_demand"  # train.capacity for the train stage
    lost_s: float = 0.0  # train: seconds paid again for an interruption (after the last checkpoint; a resume's start)
    on_demand_usd: float | None = None  # the kept work on on-demand capacity (None: written before spot pricing)
    exit_code: int = 0

    @classmethod
    def for_stage(cls, stage: str) -> CostEntry | None:
        return cls.read_if_exists(cost_file(stage))


class CostMetrics(Contract):
    """``metrics/costs.json``: the bill in the few numbers that ``dvc exp show`` and
    ``dvc metrics diff`` compare. Each stage rewrites it from the ledgers in ``costs/`` (the cost of
    the stages' latest runs: what ``dvc repro`` and ``dvc exp run`` leave); ``frugalml run``
    rewrites it at the end from its run record (that run's bill, with the DVC push and the
    orchestration rows)."""

    PATH: ClassVar[Path] = COST_METRICS
    total_usd: float
    labeling_usd: float = 0.0
    usd: dict[str, float]  # per stage
    storage_usd_per_month: float | None = None

    @classmethod
    def from_ledgers(cls) -> CostMetrics:
        entries = [e for s in STAGES if (e := CostEntry.for_stage(s)) is not None]
        return cls(
            total_usd=round(sum(e.total_usd for e in entries), 6),
            labeling_usd=round(sum(e.labeling_usd for e in entries), 6),
            usd={e.stage: e.total_usd for e in entries},
        )


class StageStatus(Contract):
    """``.frugalml/status/<stage>.json``, written when a stage fails: how the flow tells a
    rejection (exit 3) and a transient fault (retried) from other failures."""

    PATH: ClassVar[Path] = STATUS_DIR / "stage.json"
    stage: str
    exit_code: int
    message: str
    transient: bool = False


class StageRow(BaseModel):
    """One row of a run's cost table: a stage, the DVC push, or the orchestration itself."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    status: str  # ran | up to date | failed | nothing new
    wall_s: float
    usd: float
    check_wall_s: float | None = None  # the flow's time on the stage, DVC's checks included
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    labeling_usd: float = 0.0
    labeled_images: int = 0
    s3_bytes_up: int = 0
    s3_bytes_down: int = 0
    gpu_s: float = 0.0
    gpu_energy_j: float | None = None
    weights_from: Literal["cache", "mirror", "package", "download"] | None = None
    weights_download_bytes: int | None = None
    stopped: Literal["completed", "early_stopping", "budget", "pruned"] | None = None
    image_epochs: int = 0
    startup_s: float = 0.0  # of the stage process: interpreter and imports
    bytes: int | None = None  # dvc push: bytes added to the remote
    pool: str | None = None  # orchestration.pools: the work pool it ran on (None: this workspace)
    interruptions: int = 0  # attempts stopped by SIGTERM (spot notices) before the one that finished
    interrupted_usd: float = 0.0  # what those attempts cost (included in usd)
    lost_attempts: int = 0  # attempts whose worker died without a result: no ledger, their cost is not in usd
    capacity: Literal["on_demand", "spot"] = "on_demand"  # what the compute was billed as
    lost_s: float = 0.0  # seconds paid twice for interruptions: after the last checkpoint, and the retry's start-up
    lost_usd: float = 0.0  # what that lost work cost (in usd)
    on_demand_usd: float | None = None  # the same work on on-demand capacity, uninterrupted (None: = usd)

    @property
    def saving_usd(self) -> float:
        """What the capacity saved against on-demand (negative: interruptions cost more than spot saved)."""
        return round((self.usd if self.on_demand_usd is None else self.on_demand_usd) - self.usd, 6)


class DvcPush(BaseModel):
    """What ``dvc push`` added to the remote (a listing before and after)."""

    model_config = ConfigDict(extra="forbid")
    objects: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    remote_objects: int = 0
    remote_bytes: int = 0


class StorageUse(BaseModel):
    """What a run leaves in the bucket, by kind, priced per month."""

    model_config = ConfigDict(extra="forbid")
    stored_bytes: int = 0
    by_kind: dict[str, int] = {}
    usd_per_month: float = 0.0


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str
    version: str


class RunRecord(BaseModel):
    """``runs/<run_id>/record.json`` in the bucket: one pipeline run, written last (the commit point).

    Read by ``frugalml costs``, ``runs``, ``reproduce`` and ``estimate``. Records written by older
    versions load too: fields added since then take their defaults, unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")
    run_id: str
    status: Literal["succeeded", "rejected", "failed"]
    message: str = ""
    no_change: bool = False
    flow_run_id: str = ""
    orchestrator: str = ""
    git_commit: str | None = None
    git_dirty: bool | None = None
    overrides: list[str] = []
    until: str | None = None
    params: dict = {}
    stages: list[StageRow] = []
    total_usd: float = 0.0
    dvc_push: DvcPush = DvcPush()
    storage: StorageUse = StorageUse()
    wall_s: float = 0.0
    gate: GateDecision | None = None
    variants: VariantsReport | None = None  # the compress stage's variants, when it ran
    package: PackageReport | None = None
    promoted: Promotion | None = None
    finished: str = ""
    record_uri: str = ""
    files: list[str] = []

    @property
    def labeling_usd(self) -> float:
        return sum(s.labeling_usd for s in self.stages)

    @property
    def spot_saving_usd(self) -> float:
        return round(sum(s.saving_usd for s in self.stages), 6)

    def stage(self, name: str) -> StageRow | None:
        return next((s for s in self.stages if s.stage == name), None)

    def accuracy(self) -> float | None:
        """The test accuracy the gate saw (None when the run did not reach the gate)."""
        return next((c.value for c in (self.gate.checks if self.gate else []) if c.name == "min_accuracy"), None)


class RemoteStage(Contract):
    """``runs/<run_id>/stages/<stage>/result.json``: a stage that ran on a work pool's worker,
    what the orchestrating flow merges (the stage's dvc.lock entry and its uncached outputs)."""

    PATH: ClassVar[Path] = Path(".frugalml/remote/result.json")
    stage: str
    run_id: str
    pool: str
    commit: str
    worker: str  # the worker's host name
    exit_code: int
    message: str = ""  # the stage's one-line error when it failed
    transient: bool = False  # worth retrying (SIGTERM: a spot notice; the store not answering)
    lock_entry: dict | None = None  # dvc.lock's stages.<stage> as the worker wrote it
    files: list[str] = []  # uncached outputs uploaded beside this record (metrics, costs, plots)
    materialize_s: float = 0.0  # clone + checkout + dvc pull of the deps
    repro_s: float = 0.0
    publish_s: float = 0.0  # dvc push of the outs + uploads

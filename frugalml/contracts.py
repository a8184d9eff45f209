"""Files that cross a process boundary: where each lives, and (for the JSON ones) its typed model.

Stages write them; the flow, the CLI and other stages read them through this module only, so a
renamed field is one change here and a validation error, not a silent ``KeyError`` elsewhere.
Stages import paths from here, never from each other (``tasks/package.py`` importing
``tasks/train.py`` would load torch for nothing).

Models of files this version writes forbid unknown fields.
"""

from __future__ import annotations

import csv
import io
import json
import re
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from frugalml.core.errors import ConfigError, DataError
from frugalml.core.fsutil import atomic_write_json, atomic_write_text

# -- where things are ---------------------------------------------------------------------------
STAGES = ("ingest", "validate", "train", "evaluate", "compress", "gate", "package")  # the order of dvc.yaml
PREPARED = Path("data/prepared")
MANIFEST = Path("data/manifest.csv")
INGEST_REPORT = Path("metrics/ingest.json")
VALIDATION_REPORT = Path("metrics/validation.json")
VALIDATION_HTML = Path("reports/validation")
MODEL = Path("models/model.pt")
VARIANTS_DIR = Path("models/variants")  # ONNX and int8 variants of MODEL (the compress stage)
TRAIN_REPORT = Path("metrics/train.json")
TRAIN_CURVES = Path("plots/train.csv")
EVAL_REPORT = Path("metrics/eval.json")
CONFUSION_CSV = Path("plots/confusion.csv")
CONFUSION_PNG = Path("plots/confusion.png")
VARIANTS_CSV = Path("plots/variants.csv")  # a DVC plot: accuracy vs USD per 1k per variant
VARIANTS_PNG = Path("plots/variants.png")
GATE_REPORT = Path("metrics/gate.json")
PACKAGE_REPORT = Path("metrics/package.json")
COSTS_DIR = Path("costs")
HEADLINE_DIR = Path("metrics/headline")  # the few figures per stage that `dvc exp show` lists
COST_METRICS = Path("metrics/costs.json")  # the bill per stage and in total, ditto
STATUS_DIR = Path(".frugalml") / "status"


def cost_file(stage: str) -> Path:
    return COSTS_DIR / f"{stage}.json"


def status_file(stage: str) -> Path:
    return STATUS_DIR / f"{stage}.json"


def headline_file(stage: str) -> Path:
    return HEADLINE_DIR / f"{stage}.json"


# -- the manifest (CSV) -------------------------------------------------------------------------
MANIFEST_COLUMNS = [
    "path",
    "label",
    "split",
    "sha256",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "source_path",
    "source_stamp",
    "shard",
    "offset",
    "length",
]


def read_manifest(path: Path = MANIFEST) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_manifest(rows: list[dict], path: Path = MANIFEST) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    w.writerows([r.get(k, "") for k in MANIFEST_COLUMNS] for r in sorted(rows, key=itemgetter("label", "sha256")))
    atomic_write_text(path, buf.getvalue())


# -- JSON contracts -----------------------------------------------------------------------------
M = TypeVar("M", bound="Contract")


class Contract(BaseModel):
    """A JSON file with a fixed place: ``Model.read()`` / ``model.write()`` (atomic)."""

    model_config = ConfigDict(extra="forbid")
    PATH: ClassVar[Path]

    @classmethod
    def read(cls: type[M], path: Path | None = None) -> M:
        path = path or cls.PATH
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise DataError(f"{path} is missing: run the stage that writes it first") from None
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise DataError(f"{path} is not a valid {cls.__name__} ({fields})") from None
        except ValueError as exc:
            raise DataError(f"{path} is not a valid {cls.__name__}: {str(exc).splitlines()[0]}") from None

    @classmethod
    def read_if_exists(cls: type[M], path: Path | None = None) -> M | None:
        return cls.read(path) if Path(path or cls.PATH).exists() else None

    def write(self, path: Path | None = None) -> Path:
        path = Path(path or self.PATH)
        atomic_write_json(path, self.model_dump(mode="json", exclude_none=True))  # absent = None on read
        return path

    def headline(self) -> dict[str, Any]:
        """The few figures of this report that ``dvc exp show`` lists (``metrics/headline/<stage>.json``).

        The keys are unique across stages, so DVC shows them without a file prefix; the full
        report stays in its own file (a DVC out, not a metric: its 100+ fields would be columns).
        """
        return {}


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


class GateCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    value: float
    op: Literal[">=", "<="]
    threshold: float
    passed: bool
    note: str | None = None


class GateDecision(Contract):
    PATH: ClassVar[Path] = GATE_REPORT
    decision: Literal["accept", "reject"]
    failed: list[str]
    checks: list[GateCheck]
    serving_usd_per_1k: float
    train_usd: float
    champion: str | None = None
    variant: str = "fp32"  # the variant judged (and packaged): metrics/variants.json's choice

    def headline(self) -> dict[str, Any]:
        return {"decision": self.decision}


class PackageReport(Contract):
    """``metrics/package.json``. A model the gate rejected is not packaged (``packaged: false``,
    with the reason): the stage still succeeds, so that ``dvc exp run`` keeps the experiment;
    ``frugalml run`` stops before this stage and exits 3."""

    PATH: ClassVar[Path] = PACKAGE_REPORT
    model: str
    packaged: bool = True
    reason: str | None = None
    version: str = ""
    bento_tag: str = ""
    bento_uri: str = ""
    bento_bytes: int = 0
    registry_uri: str = ""

    def headline(self) -> dict[str, Any]:
        return {"packaged": self.packaged}


class Pretrained(BaseModel):
    """What a model was fine-tuned from (``model.pretrained``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "imagenet", "torchvision", "registry"]
    arch: str | None = None
    file: str | None = None
    sha256: str | None = None
    source: str | None = None  # cache | mirror | package | download | registry
    url: str | None = None
    package: str | None = None  # the weights package the file ships in (its whole sha256 pinned)
    package_version: str | None = None
    fine_tuned_from: dict | None = None


class TrainReport(Contract):
    PATH: ClassVar[Path] = TRAIN_REPORT
    arch: str
    device: str
    precision: str
    processes: int
    start: str
    pretrained: Pretrained
    finetune: str
    epochs: int
    epochs_run: int
    stopped_early: bool
    stopped: Literal["completed", "early_stopping", "budget", "pruned"] = "completed"
    max_usd: float | None = None
    usd_when_stopped: float | None = None  # stopped: budget: what the stage had spent then
    feature_cache: str = "off"  # off | on (n cached of m)
    distilled_from: dict | None = None  # train.distill_from: the teacher's ref, arch and sha256
    classes: int
    train_images: int
    loader_workers: int = 0
    final_train_loss: float
    final_train_acc: float
    final_val_acc: float
    images_per_s: float
    train_wall_s: float
    gpu_s: float
    parameters: int
    trainable_parameters: int

    def headline(self) -> dict[str, Any]:
        return {"val_acc": self.final_val_acc, "epochs_run": self.epochs_run, "stopped": self.stopped}


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    reason: str
    detail: str | None = None


class Duplicate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    duplicate_of: str


class IngestCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: int
    classes: int
    per_class: dict[str, int]
    per_split: dict[str, int]
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    hidden_skipped: int
    new: int
    removed: int
    reject_ratio: float
    decoded: int = 0
    reused_unchanged: int = 0


class ShardStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shards: int
    deleted: int
    rewritten: int


class IngestReport(Contract):
    """``metrics/ingest.json``: what the prepared dataset holds, and every file left out with its reason."""

    PATH: ClassVar[Path] = INGEST_REPORT
    source: str
    source_kind: str
    counts: IngestCounts
    rejected: list[Rejection]
    duplicates: list[Duplicate]
    shards: ShardStats | None = None

    def headline(self) -> dict[str, Any]:
        return {"images": self.counts.images, "new_images": self.counts.new, "rejected_images": self.counts.rejected}


class Expectation(BaseModel):
    """One Great Expectations check as the report shows it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    asset: str
    expectation: str
    column: str | None = None
    observed: Any = None  # a number, a set of values, or {unexpected_count, examples}
    threshold: str
    success: bool
    severity: Literal["fail", "warn"] = "fail"


class ValidationReport(Contract):
    PATH: ClassVar[Path] = VALIDATION_REPORT
    success: bool
    images: int
    expectations: list[Expectation]
    failed: list[str]
    warnings: list[str]
    label_distribution: dict[str, float]
    drift_reference: dict | None = None
    html_report: str

    def headline(self) -> dict[str, Any]:
        return {"validation": "passed" if self.success else "failed", "validation_warnings": len(self.warnings)}


class ClassScores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: float
    recall: float
    f1: float
    support: int


class ChampionScores(BaseModel):
    """The production model scored on the same test images (``comparable`` when its classes match)."""

    model_config = ConfigDict(extra="forbid")
    version: str
    comparable: bool
    accuracy: float | None = None
    macro_f1: float | None = None
    top3_accuracy: float | None = None
    ece: float | None = None
    per_class_recall: dict[str, float] | None = None


class EvalReport(Contract):
    PATH: ClassVar[Path] = EVAL_REPORT
    test_images: int
    accuracy: float
    macro_f1: float
    top3_accuracy: float
    ece: float
    per_class: dict[str, ClassScores]
    device: str
    model_size_bytes: int
    parameters: int
    latency_ms_p50: float
    latency_ms_p95: float
    throughput_images_per_s: float
    throughput_batch_size: int
    champion: ChampionScores | None = None
    delta_vs_champion: dict[str, float] | None = None

    def headline(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "worst_class_recall": min((c.recall for c in self.per_class.values()), default=0.0),
            "latency_ms_p95": self.latency_ms_p95,
            "model_mb": round(self.model_size_bytes / 1e6, 3),
        }


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


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def is_safe_id(value: str) -> bool:
    return bool(_SAFE_ID.fullmatch(value))


def safe_id(value: str, what: str, example: str) -> str:
    """``value`` if it is an id (letters, digits, ``-``, ``_``): ids typed by users or read from the
    bucket name folders here and keys there, so anything else (``..``, ``/``) is refused, never
    made a path."""
    if not is_safe_id(value):
        raise ConfigError(f"{value!r} is not {what} (letters, digits, - and _; e.g. {example})")
    return value


SWEEPS = Path(".frugalml") / "sweeps"  # sweeps/<id>/: the Optuna storage, the record, the chart


class SweepTrial(BaseModel):
    """One trial of a sweep: its settings, what it scored and what it cost."""

    model_config = ConfigDict(extra="forbid")
    number: int
    experiment: str  # the DVC experiment name (`dvc exp show`, `dvc exp apply <name>`)
    overrides: list[str]  # KEY=VALUE, as `frugalml run --set` takes them
    state: Literal["complete", "pruned", "failed", "interrupted"]
    accuracy: float | None = None
    macro_f1: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    model_size_bytes: int | None = None
    epochs_run: int | None = None
    stopped: str | None = None
    usd: float = 0.0  # the whole trial: DVC's checks, both stages, start-ups (pruned and failed too)
    train_usd: float = 0.0  # the train stage's cost entry (what gates.max_train_usd checks)
    wall_s: float = 0.0
    started_at: float | None = None  # unix time the trial started (trials may overlap: sweep.parallel)
    gate: GateDecision | None = None
    message: str = ""

    def score(self, objective: str = "accuracy") -> float | None:
        """The quality the sweep maximises (``sweep.objective``): test accuracy or macro-F1."""
        return self.macro_f1 if objective == "macro_f1" else self.accuracy


class ScreenResult(BaseModel):
    """One start of a sweep screened before its trials (``sweep.screen``): the head alone trained
    on the frozen backbone's cached features, scored on the validation split."""

    model_config = ConfigDict(extra="forbid")
    overrides: list[str]  # the start: model.arch / model.pretrained / model.image_size, KEY=VALUE
    val_accuracy: float
    usd: float  # its wall time at the price sheet (the sweep's own process, no DVC)
    wall_s: float
    features_cached: int = 0  # images whose features the feature cache already held


class SweepRecord(BaseModel):
    """``sweeps/<id>/record.json`` (locally under .frugalml/ and in the bucket): trials, spend, front."""

    model_config = ConfigDict(extra="forbid")
    id: str
    created: str
    status: Literal["running", "finished", "budget", "interrupted"]
    space: dict
    budget_usd: float
    objective: Literal["accuracy", "macro_f1"] = "accuracy"
    spent_usd: float = 0.0
    max_trials: int
    trials: list[SweepTrial] = []
    front: list[int] = []  # trial numbers on the Pareto front (accuracy up, USD down)
    recommended: int | None = None  # the cheapest trial that passes every gate
    base_overrides: list[str] = []
    repeats_skipped: int = 0  # settings the sampler proposed again: the earlier result told, not run
    # the data preparation before the trials (`dvc repro validate`: ingest, validate), when stages ran:
    # its compute counts in spent_usd (and against the budget); labels ingested then are billed here too
    prep_usd: float = 0.0
    prep_labeling_usd: float = 0.0
    # the screen of the starts before the trials (`sweep.screen`): each start's head-only score, and
    # its compute (counted in spent_usd and against the budget)
    screen: list[ScreenResult] = []
    screen_usd: float = 0.0

    @staticmethod
    def path(sweep_id: str) -> Path:
        return SWEEPS / safe_id(sweep_id, "a sweep id", "s20261204-151018-44a9") / "record.json"

    def write(self) -> None:
        atomic_write_text(self.path(self.id), self.model_dump_json(indent=2, exclude_none=True))

    @classmethod
    def read(cls, sweep_id: str) -> SweepRecord:
        path = cls.path(sweep_id)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise DataError(f"no sweep {sweep_id!r} here ({path} is missing); `frugalml frontier` lists them") from None
        except ValidationError as exc:
            raise DataError(f"{path} is not a valid SweepRecord: {exc.errors()[0]['msg']}") from None


# -- frugalml labels ------------------------------------------------------------------------------
class CurvePoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float  # of the train split
    n: int  # labeled train images
    accuracy: float  # on the test split


class Projection(BaseModel):
    """What ``multiple`` x the train labels would buy, by the fitted curve."""

    model_config = ConfigDict(extra="forbid")
    multiple: float
    n: int
    accuracy: float
    low: float  # the bootstrap band (2.5th and 97.5th percentiles)
    high: float
    extra_labels: int
    labels_usd: float  # the extra labels at costs.prices.labeling_usd_per_image


class LabelCurve(Contract):
    """``frugalml labels curve``: test accuracy vs labeled train images, and what more would buy."""

    PATH: ClassVar[Path] = Path("metrics/label_curve.json")
    backbone: str  # where the frozen features come from (model.pretrained)
    head: str
    points: list[CurvePoint]
    fit: dict[str, float]  # accuracy = a - b * n ** -c
    projections: list[Projection]
    target_accuracy: float
    target_n: int | None = None  # train labels the fit needs for the target (None: beyond its ceiling a)
    target_extra_labels: int | None = None
    target_usd: float | None = None
    backtest_fractions: list[float] = []  # the fit on these (<= 0.5) ...
    backtest_predicted: float | None = None  # ... predicts the accuracy at 1.0 ...
    backtest_measured: float | None = None  # ... measured here
    backtest_error_pp: float | None = None
    labeling_usd_per_image: float
    wall_s: float
    usd: float  # the command's compute


class LabelIssue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_path: str  # the file in the labeled source (where the label is fixed)
    path: str  # its prepared name (data/manifest.csv)
    sha256: str
    split: str
    given: str
    suggested: str
    quality: float  # cleanlab's label quality score: low = likely wrong


class LabelAudit(Contract):
    """``frugalml labels audit``: labels that out-of-sample predictions contradict (cleanlab)."""

    PATH: ClassVar[Path] = Path("metrics/label_audit.json")
    CSV: ClassVar[Path] = Path("reports/label_audit.csv")
    HTML: ClassVar[Path] = Path("reports/label_audit.html")
    backbone: str
    head: str
    folds: int
    images: int
    issues: int
    issue_ratio: float
    out_of_sample_accuracy: float
    issues_by_class: dict[str, int]  # given label -> flagged images
    labels_usd_flagged: float  # what the flagged labels cost (and relabeling them would cost again)
    top: list[LabelIssue]  # the worst first (all of them are in the CSV)
    wall_s: float
    usd: float


class NextImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    source_path: str  # in labels.unlabeled
    sha256: str
    uncertainty: float  # 1 - (top-1 minus top-2 probability), or the entropy
    predicted: str  # the current head's guess (not shown to annotators)
    url: str  # presigned GET URL the annotators open


class NextBatch(Contract):
    """``frugalml labels next``: the images to label next, why, and what labeling them costs."""

    PATH: ClassVar[Path] = Path("reports/labels_next.json")
    CSV: ClassVar[Path] = Path("reports/labels_next.csv")
    TASKS: ClassVar[Path] = Path("reports/labels_next_tasks.json")  # Label Studio import
    CONFIG: ClassVar[Path] = Path("reports/labels_next_config.xml")  # Label Studio labeling interface
    id: str
    unlabeled: str
    candidates: int  # new images in the unlabeled source (already-labeled content skipped)
    skipped: dict[str, int]  # reason -> images not considered (already labeled, not an image, ...)
    budget: int
    uncertainty: str
    chosen: list[NextImage]
    labels_usd: float
    url_expiry_s: int
    wall_s: float = 0.0
    usd: float = 0.0


class ImportedLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int | str
    annotation_id: int | str | None = None
    annotator: str
    label: str
    source_path: str  # in labels.unlabeled
    sha256: str
    dest: str  # where it was written in data.source


class ImportRecord(BaseModel):
    """``frugalml labels import``: provenance of each imported label (``labels/imports/<id>.json``)."""

    DIR: ClassVar[Path] = Path(".frugalml") / "labels" / "imports"
    model_config = ConfigDict(extra="forbid")
    id: str  # the export's sha256 (first 16 hex): a replayed import is the same record
    export: str  # the file imported
    created: str
    destination: str  # data.source
    labels: list[ImportedLabel]
    already_labeled: int = 0  # the same image with the same label was there already

    @classmethod
    def pending(cls, labeled: set[str]) -> int:
        """Imported images whose content is not in the manifest yet: the next ingest's new labels."""
        shas = set()
        for path in sorted(cls.DIR.glob("*.json")) if cls.DIR.is_dir() else []:
            try:
                shas |= {x.sha256 for x in cls.model_validate_json(path.read_text()).labels}
            except (OSError, ValidationError):
                continue  # a record this version cannot read does not make the estimate fail
        return len(shas - labeled)


class VariantScore(BaseModel):
    """One servable variant of the trained model, measured on the test split."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["fp32", "onnx", "int8"]
    runtime: str  # torch | onnxruntime
    status: Literal["built", "skipped"]
    reason: str = ""  # why it was skipped
    file: str = ""
    size_bytes: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    worst_class_recall: float | None = None
    accuracy_delta: float | None = None  # vs fp32
    latency_ms_p50: float | None = None  # batch 1
    latency_ms_p95: float | None = None
    throughput_images_per_s: float | None = None  # batch 16
    usd_per_1k: float | None = None  # at costs.prices.serving_usd_per_hour, one request at a time


class VariantsReport(Contract):
    """``metrics/variants.json`` (the compress stage): every variant and the one to serve."""

    PATH: ClassVar[Path] = Path("metrics/variants.json")
    variants: list[VariantScore]
    chosen: str
    why: str

    def chosen_score(self) -> VariantScore:
        return next(v for v in self.variants if v.name == self.chosen)

    def headline(self) -> dict[str, Any]:
        return {"variant": self.chosen, "variant_usd_per_1k": self.chosen_score().usd_per_1k}


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


RunRecord.model_rebuild()  # it names VariantsReport, defined after it

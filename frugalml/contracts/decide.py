"""The cost decisions' files: a sweep's record (trials, screen, front, recommendation) and the
labels commands' reports (curve, audit, next batch, import provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from frugalml.contracts.base import Contract, safe_id
from frugalml.contracts.ship import GateDecision
from frugalml.core.errors import DataError
from frugalml.core.fsutil import atomic_write_text

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
    val_accuracy: float | None  # None: the start could not be screened (message says why)
    usd: float  # its wall time at the price sheet (the sweep's own process, no DVC)
    wall_s: float
    features_cached: int = 0  # images whose features the feature cache already held
    message: str = ""


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
    advice: str = ""  # set when the audit's model is too weak for its flags to be trusted (what to do)


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

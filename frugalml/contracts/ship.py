"""Shipping's files: ``metrics/eval.json``, ``metrics/variants.json``, the gate's decision
(``metrics/gate.json``) and ``metrics/package.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from frugalml.contracts.base import EVAL_REPORT, GATE_REPORT, PACKAGE_REPORT, Contract


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

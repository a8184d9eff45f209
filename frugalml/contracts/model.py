"""The train stage's report, ``metrics/train.json``, and the pretrained weights it started from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from frugalml.contracts.base import TRAIN_REPORT, Contract


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

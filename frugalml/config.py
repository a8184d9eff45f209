"""The one typed configuration, read from params.yaml.

Every key is documented in README.md ("params.yaml reference"). Unknown keys and wrong
values fail at load time with the key's path and what was expected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from frugalml.errors import ConfigError

PARAMS_FILE = "params.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Splits(_Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "Splits":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class DataConfig(_Strict):
    source: str = "s3://frugalml/sources/digits"
    splits: Splits = Splits()
    extensions: list[str] = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
    max_side: int | None = Field(None, gt=0)
    max_pixels: int = Field(89_478_485, gt=0)
    workers: int = Field(0, ge=0)
    shard_mb: int = Field(256, ge=1)
    max_file_bytes: int = Field(100_000_000, gt=0)
    endpoint_url: str | None = None

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must name a source: s3://bucket/prefix, a local folder, an archive, or builtin:digits")
        if v.startswith("builtin:") and v != "builtin:digits":
            raise ValueError(f"unknown built-in dataset {v!r}; the only one is builtin:digits")
        return v

    @field_validator("extensions")
    @classmethod
    def _lower_ext(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]


class ValidateConfig(_Strict):
    expected_classes: list[str] | None = None
    min_images_per_class: int = Field(10, ge=1)
    max_imbalance_ratio: float = Field(20.0, ge=1)
    max_reject_ratio: float = Field(0.05, ge=0, le=1)
    max_label_drift: float = Field(0.15, ge=0, le=1)
    drift_action: Literal["warn", "fail"] = "warn"
    min_width: int = Field(1, ge=1)
    min_height: int = Field(1, ge=1)
    max_width: int = Field(20_000, ge=1)
    max_height: int = Field(20_000, ge=1)
    allowed_modes: list[str] = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]


class ModelConfig(_Strict):
    name: str = Field("frugal-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    arch: Literal[
        "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
        "efficientnet_b0", "convnext_tiny",
    ] = "resnet18"
    pretrained: str = "none"
    weights_url: str | None = None
    image_size: int = Field(32, ge=16, le=1024)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_form(cls, v: str) -> str:
        if v in ("none", "torchvision") or (v.startswith("registry:") and len(v) > len("registry:")):
            return v
        raise ValueError("must be 'none', 'torchvision' or 'registry:<model>@<alias or version>'")


class AugmentConfig(_Strict):
    hflip: bool = False
    rotation_deg: float = Field(10.0, ge=0, le=180)
    translate: float = Field(0.08, ge=0, le=0.5)
    scale_min: float = Field(0.9, gt=0)
    scale_max: float = Field(1.1, gt=0)
    color_jitter: float = Field(0.0, ge=0, le=1)


class EarlyStoppingConfig(_Strict):
    patience: int = Field(0, ge=0)  # epochs without improvement; 0 = off
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    min_delta: float = Field(0.0, ge=0)


class DistributedConfig(_Strict):
    nproc_per_node: int = Field(1, ge=1)


class WarmStartConfig(_Strict):
    """Training from a registry model (``model.pretrained: registry:...``): short and gentle."""

    epochs: int | None = Field(1, ge=1)   # None = train.epochs
    lr_mult: float = Field(0.005, gt=0)   # learning rates x this: a converged model needs small steps


class TrainConfig(_Strict):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    lr: float = Field(0.002, gt=0)
    backbone_lr_mult: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.0001, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: bool = False
    finetune: Literal["full", "head", "last_n"] = "full"
    finetune_last_n: int = Field(1, ge=1)
    augment: AugmentConfig = AugmentConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    num_threads: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    checkpoint_to_s3: bool = True
    keep_checkpoints: bool = False
    warm_start: WarmStartConfig = WarmStartConfig()
    distributed: DistributedConfig = DistributedConfig()


class EvaluateConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    latency_samples: int = Field(50, ge=5)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class GatesConfig(_Strict):
    """Every gate but min_accuracy is off when null."""

    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_macro_f1: float | None = Field(None, ge=0, le=1)
    min_class_recall: float | None = Field(None, ge=0, le=1)
    max_regression: float | None = Field(0.01, ge=0, le=1)
    max_latency_ms_p95: float | None = Field(None, gt=0)
    max_model_size_mb: float | None = Field(None, gt=0)
    max_train_usd: float | None = Field(None, ge=0)
    max_serving_usd_per_1k: float | None = Field(None, ge=0)


class PromotionConfig(_Strict):
    auto: Literal["none", "staging", "production"] = "none"


class Prices(_Strict):
    # Defaults: AWS us-east-1 on-demand list prices, read 2026 (see README "Price sheet").
    usd_per_vcpu_hour: float = Field(0.0446, ge=0)
    usd_per_gpu_hour: dict[str, float] = {"a100": 1.84, "h100": 4.92, "h200": 5.41}
    usd_per_gb_month: float = Field(0.023, ge=0)
    usd_per_1k_put: float = Field(0.005, ge=0)
    usd_per_1k_get: float = Field(0.0004, ge=0)
    labeling_usd_per_image: float = Field(0.08, ge=0)
    serving_usd_per_hour: float = Field(0.0893, ge=0)


class CostsConfig(_Strict):
    prices: Prices = Prices()
    vcpus: int = Field(0, ge=0)
    gpu_type: str = "a100"


class StorageConfig(_Strict):
    endpoint_url: str | None = None
    bucket: str = Field("frugalml", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = ""
    region: str = "us-east-1"

    @field_validator("prefix")
    @classmethod
    def _prefix_form(cls, v: str) -> str:
        v = v.strip("/")
        return v + "/" if v else ""


class ServingConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    max_image_bytes: int = Field(10_000_000, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(8, ge=1, le=32)
    top_k: int = Field(3, ge=1)


class Params(_Strict):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gates: GatesConfig = GatesConfig()
    costs: CostsConfig = CostsConfig()
    storage: StorageConfig = StorageConfig()
    serving: ServingConfig = ServingConfig()
    promotion: PromotionConfig = PromotionConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin} is not valid:"]
    for e in err.errors():
        path = ".".join(str(p).rstrip("_") for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; every key is listed in README.md)"
        got = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> (["train", "epochs"], 3). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: the key must be a dotted params.yaml path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def read_raw(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run frugalml from the pipeline repository's root")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, train, ...)")
    return data


def validate(raw: dict, origin: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None


def load(path: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    raw = read_raw(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw, str(path))


def dump(params: Params) -> dict:
    return params.model_dump(mode="json", by_alias=True)


def write_overrides(path: str | Path, overrides: list[str]) -> None:
    """Apply KEY=VALUE overrides to params.yaml in place, keeping its comments.

    Like ``dvc exp run -S``: the workspace's params.yaml changes, so dvc.lock and the run
    record agree on what was run. The result is validated before anything is written.
    """
    from ruamel.yaml import YAML

    from frugalml.fsutil import atomic_write_text

    path = Path(path)
    validate(apply_overrides(read_raw(path), overrides), f"{path} with --set {' '.join(overrides)}")
    ry = YAML()
    ry.preserve_quotes = True
    # ruamel writes None as an empty value; the file says `null`: keep every untouched line as written
    ry.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = ry.load(path.read_text(encoding="utf-8"))
    for item in overrides:
        keys, value = parse_override(item)
        node = doc
        for k in keys[:-1]:
            if k not in node or node[k] is None:
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    import io

    buf = io.StringIO()
    ry.dump(doc, buf)
    atomic_write_text(path, buf.getvalue())

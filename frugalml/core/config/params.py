"""``Params``, the whole of params.yaml, and reading it: ``load``, ``--set`` overrides
(``apply_overrides``), ``write_overrides`` (which keeps every untouched line and comment)."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML

from frugalml.core.config.base import PARAMS_FILE, _Strict
from frugalml.core.config.costs import CostsConfig, OrchestrationConfig, StorageConfig
from frugalml.core.config.data import DataConfig, ValidateConfig
from frugalml.core.config.decide import LabelsConfig, SweepConfig
from frugalml.core.config.model import ModelConfig, TrainConfig
from frugalml.core.config.ship import CompressConfig, EvaluateConfig, GatesConfig, PromotionConfig, ServingConfig
from frugalml.core.errors import ConfigError
from frugalml.core.fsutil import atomic_write_text


class Params(_Strict):
    """Everything a run reads: ``params.yaml``, one section per part of the pipeline."""

    data: DataConfig = DataConfig()
    """Where the labeled images come from and how the ingest stage prepares them."""
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    """What the validate stage (Great Expectations) requires of the prepared data; a failure exits 3."""
    model: ModelConfig = ModelConfig()
    """The network: architecture, where its weights start from, input size and normalisation."""
    train: TrainConfig = TrainConfig()
    """The train stage: epochs, optimiser, fine-tuning depth, augmentation, budget and hardware."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """The evaluate stage: test-split metrics and latency."""
    gates: GatesConfig = GatesConfig()
    """What a model must pass to be packaged and promoted; every gate but min_accuracy is off when null."""
    costs: CostsConfig = CostsConfig()
    """How stages are priced: the price sheet and the machine."""
    storage: StorageConfig = StorageConfig()
    """The S3-compatible store of artifacts, DVC's remote and the registry (credentials from the environment)."""
    serving: ServingConfig = ServingConfig()
    """`frugalml serve`: where it listens, what it accepts, which variant it serves."""
    promotion: PromotionConfig = PromotionConfig()
    """What a run does with a model that passes the gates."""
    sweep: SweepConfig = SweepConfig()
    """`frugalml sweep`: Optuna over these settings, each trial a DVC experiment."""
    labels: LabelsConfig = LabelsConfig()
    """`frugalml labels curve | audit | next | import`: on the frozen backbone's cached features."""
    compress: CompressConfig = CompressConfig()
    """The compress stage: cheaper-to-serve variants of the trained model, each scored on the test split."""
    orchestration: OrchestrationConfig = OrchestrationConfig()
    """Where each stage runs: this workspace or a Prefect work pool, and what a pool's node costs."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True)

    @model_validator(mode="after")
    def _priced(self):
        """Every price a run will need is on the sheet: no stage is silently billed at $0."""
        c = self.costs
        for capacity in ("on_demand", "spot") if self.train.capacity == "spot" else ("on_demand",):
            if c.gpu_type not in c.prices.rates(capacity)[1]:
                key = "usd_per_gpu_hour" if capacity == "on_demand" else "spot_usd_per_gpu_hour"
                raise ValueError(f"costs.gpu_type {c.gpu_type!r} has no price in costs.prices.{key}")
        o = self.orchestration
        pool = o.pool_for("train")
        if self.train.capacity == "spot" and pool in o.pool_usd_per_hour and pool not in o.pool_spot_usd_per_hour:
            raise ValueError(
                f"train.capacity is spot and pool {pool!r} has an on-demand node price: "
                f"set orchestration.pool_spot_usd_per_hour.{pool} too"
            )
        return self


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin} is not valid:"]
    for e in err.errors():
        path = ".".join(str(p).rstrip("_") for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; every key is listed in params.yaml and docs/params.md)"
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

    path = Path(path)
    validate(apply_overrides(read_raw(path), overrides), f"{path} with --set {' '.join(overrides)}")
    ry = YAML()
    ry.preserve_quotes = True
    ry.width = 4096  # a long flow line (sweep.space) stays one line: only the changed key differs
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

    buf = io.StringIO()
    ry.dump(doc, buf)
    atomic_write_text(path, buf.getvalue())

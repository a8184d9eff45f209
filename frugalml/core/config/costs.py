"""``costs``, ``storage`` and ``orchestration``: the price sheet, the store, and where stages run."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from frugalml.contracts import STAGES
from frugalml.core.config.base import _Strict


class Prices(_Strict):
    # Defaults: AWS us-east-1 on-demand list prices, read 2026 (see the docs, params.md "Price sheet").
    usd_per_vcpu_hour: float = Field(0.0446, ge=0)
    """c7i.large on-demand, $0.0893/h for 2 vCPUs"""
    usd_per_gpu_hour: dict[str, float] = {"a100": 1.84, "h100": 4.92, "h200": 5.41}
    """EC2 capacity blocks per GPU-hour (p4d, p5, p5e)"""
    usd_per_gb_month: float = Field(0.023, ge=0)
    """S3 Standard, first 50 TB"""
    usd_per_1k_put: float = Field(0.005, ge=0)
    """S3 PUT, COPY, POST, LIST requests"""
    usd_per_1k_get: float = Field(0.0004, ge=0)
    """S3 GET and other requests"""
    labeling_usd_per_image: float = Field(0.08, ge=0)
    """SageMaker Ground Truth image classification, per object (first 50k), workforce extra"""
    serving_usd_per_hour: float = Field(0.0893, ge=0)
    """one c7i.large serving replica"""
    # Spot capacity (train.capacity: spot). Spot prices move hourly: these are placeholders at 40% of
    # the on-demand ones above; put yours (`aws ec2 describe-spot-price-history`).
    spot_usd_per_vcpu_hour: float = Field(0.0178, ge=0)
    """the vCPU-hour on spot capacity (`train.capacity: spot`). A placeholder at 40% of on-demand: spot prices move
    hourly, put yours (`aws ec2 describe-spot-price-history`)
    """
    spot_usd_per_gpu_hour: dict[str, float] = {"a100": 0.74, "h100": 1.97, "h200": 2.16}
    """the GPU-hour on spot capacity; placeholders at 40% of the on-demand row"""

    def rates(self, capacity: str) -> tuple[float, dict[str, float]]:
        """(USD per vCPU-hour, USD per GPU-hour by type) on ``on_demand`` or ``spot`` capacity."""
        if capacity == "spot":
            return self.spot_usd_per_vcpu_hour, self.spot_usd_per_gpu_hour
        return self.usd_per_vcpu_hour, self.usd_per_gpu_hour


class CostsConfig(_Strict):
    prices: Prices = Prices()
    """the price sheet (below): what each resource costs"""
    vcpus: float = Field(0, ge=0)
    """vCPUs billed per second of stage wall time; 0 = this machine's cores. May be fractional: a sweep's side-by-side
    trials each run with `costs.vcpus` = their share (see `sweep.parallel`)
    """
    gpu_type: str = "a100"
    """key into `costs.prices.usd_per_gpu_hour` (and `spot_usd_per_gpu_hour` when `train.capacity` is spot): a type
    without a price is refused at load, never billed $0
    """


class StorageConfig(_Strict):
    endpoint_url: str | None = None
    """S3 endpoint; null = `$FRUGALML_S3_ENDPOINT`, else embedded, else AWS"""
    bucket: str = Field("frugalml", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """the bucket for everything"""
    prefix: str = ""
    """key prefix for everything in the bucket"""
    region: str = "us-east-1"
    """S3 region"""

    @field_validator("prefix")
    @classmethod
    def _prefix_form(cls, v: str) -> str:
        v = v.strip("/")
        return v + "/" if v else ""


class OrchestrationConfig(_Strict):
    """Where each stage runs: ``local`` (this workspace) or a Prefect work pool (a deployment of
    ``flows/remote_stage.py`` named after the pool: ``frugalml-stage/<pool>``)."""

    pools: dict[str, str] = {"default": "local"}
    """where each stage runs: `local` (this workspace) or a Prefect work pool; `default` covers the stages not listed.
    E.g. `{default: local, train: gpu}`. Only `frugalml run` reads it: `dvc repro` runs everything here
    """
    submit_timeout_s: float = Field(600, gt=0)
    """a remote stage that no worker picks up in this time is cancelled (no orphaned flow run) and the run fails naming
    the pool
    """
    git_remote: str = "origin"
    """where workers fetch the run's commit: a git remote's name, a URL or a path. The run checks first that a branch
    or tag there contains the commit. Credentials in the URL (`https://user:token@host/...`) are removed before it
    reaches Prefect (flow-run parameters, logs) or a message: a worker clones with its own git credentials (a
    credential helper, an SSH key)
    """
    pool_usd_per_hour: dict[str, float] = {}
    """a pool's node price per hour, e.g. `{gpu: 1.10}`: a stage there is billed wall time x this (instead of its CPU
    and GPU share of `costs.prices`)
    """
    pool_spot_usd_per_hour: dict[str, float] = {}
    """the same node's spot price, e.g. `{gpu: 0.45}`: the train stage there with `train.capacity: spot` is billed at
    it. Required for the train pool when that pool has an on-demand node price and capacity is spot
    """

    @model_validator(mode="after")
    def _known_stages(self):
        unknown = set(self.pools) - {"default", *STAGES}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)} in pools; stages: {', '.join(STAGES)}")
        return self

    def pool_for(self, stage: str) -> str:
        return self.pools.get(stage, self.pools.get("default", "local"))

"""``model`` and ``train``: the backbone, where it starts, and how it is fine-tuned."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from frugalml.core.config.base import _Strict
from frugalml.core.errors import ConfigError


class ModelConfig(_Strict):
    name: str = Field("frugal-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    """registry and BentoML model name"""
    arch: str = "timm/tf_efficientnet_lite0"
    """a torchvision model (resnet18/34/50, mobilenet_v3_small/large, efficientnet_b0, convnext_tiny) or `timm/<name>`,
    any model of timm's zoo (`timm.list_models()`); an unknown name stops with the closest names (exit 2)
    """
    pretrained: str = "imagenet"
    """`imagenet`: the arch's ImageNet weights, from the local torch hub cache, the team mirror in the store, the
    installed `frugalml[weights]` package (EfficientNet-Lite0/1/2, sha256 pinned), then the published download
    (torchvision's or timm's), see Your own data; `torchvision`: the same for a torchvision arch (kept from earlier
    releases); `none`: random initialisation; or `registry:<model>@<alias or version>` (a model of yours; the head
    is re-initialised when the classes differ)
    """
    weights_url: str | None = None
    """where ImageNet weights are downloaded from: null = the published URL (torchvision's, or timm's pretrained
    config); a URL ending in `/` = a base (an internal HTTP mirror) to which torchvision's file name is appended;
    otherwise the file's own URL (`http(s)://` or `file://`), whose name must carry its sha256 prefix
    (`<name>-<hex>.pth`)
    """
    image_size: int = Field(64, ge=16, le=1024)
    """input side in pixels (the ImageNet weights were trained at 224 px, lite1 240, lite2 260; smaller costs less per
    image)
    """
    mean: tuple[float, float, float] | None = None
    """input normalisation's per-channel mean; null = what the arch's pretrained weights expect: timm's
    pretrained config (0.5 / 0.5 for the EfficientNet-Lites), torchvision's ImageNet values
    """
    std: tuple[float, float, float] | None = None
    """input normalisation's per-channel spread; null = what the arch's pretrained weights expect, as for `mean`"""

    @field_validator("arch")
    @classmethod
    def _arch_form(cls, v: str) -> str:
        from frugalml.core.archs import ARCHS, TIMM_PREFIX, check_arch, known_without_timm, unknown_arch

        if v in ARCHS or known_without_timm(v):
            return v
        if v.startswith(TIMM_PREFIX) and re.fullmatch(r"[a-z0-9_.]+", v[len(TIMM_PREFIX) :] or "-"):
            try:
                check_arch(v)  # imports timm (seconds): only archs outside the packaged ImageNet ones
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            return v
        raise ValueError(str(unknown_arch(v)))

    @field_validator("pretrained")
    @classmethod
    def _pretrained_form(cls, v: str) -> str:
        if v in ("none", "imagenet", "torchvision") or (v.startswith("registry:") and len(v) > len("registry:")):
            return v
        raise ValueError("must be 'none', 'imagenet', 'torchvision' or 'registry:<model>@<alias or version>'")

    @property
    def from_imagenet(self) -> bool:
        """``pretrained`` names ImageNet weights (``imagenet``, or ``torchvision`` kept from before)."""
        return self.pretrained in ("imagenet", "torchvision")

    def norm(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) of the input transform: as set, else what the arch's pretrained weights expect."""
        from frugalml.core.archs import default_normalization

        mean, std = default_normalization(self.arch)
        return tuple(self.mean or mean), tuple(self.std or std)

    @model_validator(mode="after")
    def _pretrained_fits(self) -> ModelConfig:
        if self.pretrained == "torchvision" and self.arch.startswith("timm/"):
            raise ValueError(f"pretrained 'torchvision' is for torchvision archs; {self.arch} takes 'imagenet'")
        return self


def registry_ref(ref: str) -> tuple[str, str]:
    """``registry:<model>@<alias or version>`` -> (model, alias or version)."""
    name, _, alias = ref.removeprefix("registry:").partition("@")
    if not ref.startswith("registry:") or not name or not alias:
        raise ValueError(f"{ref!r} must look like registry:<model>@<alias or version>")
    return name, alias


class AugmentConfig(_Strict):
    hflip: bool = False
    """random horizontal flips"""
    rotation_deg: float = Field(180.0, ge=0, le=180)
    """largest random rotation in degrees (the demo's shapes come in any orientation; use a small angle for photos)"""
    translate: float = Field(0.08, ge=0, le=0.5)
    """largest random shift, as a share of the side"""
    scale_min: float = Field(0.9, gt=0)
    """smallest random zoom"""
    scale_max: float = Field(1.1, gt=0)
    """largest random zoom"""
    color_jitter: float = Field(0.0, ge=0, le=1)
    """brightness, contrast and saturation jitter"""


class EarlyStoppingConfig(_Strict):
    patience: int = Field(0, ge=0)
    """stop after this many epochs without improvement (0 = off); the last epoch's weights are kept"""
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    """`val_acc` or `val_loss`: the validation figure watched"""
    min_delta: float = Field(0.0, ge=0)
    """the least change that counts as an improvement"""


class DistributedConfig(_Strict):
    nproc_per_node: int = Field(1, ge=1)
    """more than 1: the stage relaunches itself under `torchrun` (DDP; gloo on CPU, nccl on GPU)"""


class WarmStartConfig(_Strict):
    """Training from a registry model (``model.pretrained: registry:...``): short and gentle."""

    epochs: int | None = Field(1, ge=1)
    """epochs when `model.pretrained` is `registry:...`; null = `train.epochs`"""
    lr_mult: float = Field(0.005, gt=0)
    """learning rates x this when warm-starting from the registry (AdamW's first steps move every weight by about lr,
    which unsettles a converged model at the cold-start lr)
    """


class TrainConfig(_Strict):
    epochs: int = Field(6, ge=1)
    """epochs"""
    batch_size: int = Field(32, ge=1)
    """batch size (per process under DDP)"""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """`adamw` or `sgd` (momentum 0.9)"""
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    """`onecycle`, `cosine` or `constant` learning rate"""
    lr: float = Field(0.002, gt=0)
    """the head's (peak) learning rate"""
    backbone_lr_mult: float = Field(1.0, ge=0)
    """backbone learning rate = `lr` x this; 0 freezes the backbone"""
    weight_decay: float = Field(0.0001, ge=0)
    """weight decay"""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """cross-entropy label smoothing"""
    class_weights: bool = False
    """weight the loss by inverse class frequency (imbalanced data)"""
    finetune: Literal["full", "head", "last_n"] = "full"
    """`full`, `head` (frozen backbone) or `last_n` (only the last `finetune_last_n` backbone blocks train)"""
    finetune_last_n: int = Field(1, ge=1)
    """blocks trained with `last_n` (resnet: layer1-4; others: `features` stages)"""
    augment: AugmentConfig = AugmentConfig()
    """training-time augmentation (below); all off lets `finetune: head` train on cached features"""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """stop when the validation metric stops improving (below)"""
    seed: int = 42
    """seed; CPU training with a fixed seed is bitwise deterministic"""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `mps`"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto` (bf16 autocast on CUDA, fp32 elsewhere), `fp32`, `bf16`, `fp16` (with GradScaler)"""
    channels_last: bool = True
    """channels-last memory format on CUDA"""
    compile: bool = False
    """`torch.compile` the model"""
    num_threads: int = Field(0, ge=0)
    """torch CPU threads; 0 = torch's default"""
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """DataLoader worker processes: `auto` = cores - 1 on CUDA (with pinned memory and a prefetch of 4 batches per
    worker), 0 on CPU, where workers compete with the compute for the same cores; or a number
    """
    checkpoint_to_s3: bool = True
    """upload each epoch's checkpoint to `checkpoints/<run_id>/` (resume on another worker); only the newest epoch's is
    kept
    """
    keep_checkpoints: bool = False
    """keep that last checkpoint in S3 after a successful train stage; by default it is deleted (it is priced per
    GB-month in the run record while it stays)
    """
    warm_start: WarmStartConfig = WarmStartConfig()
    """training from a registry model: short and gentle (below)"""
    distributed: DistributedConfig = DistributedConfig()
    """data-parallel training (below)"""
    max_usd: float | None = Field(None, gt=0)
    """a live budget for the train stage, in USD at the price sheet (compute, GPU): checked between steps (every 0.5 s)
    and before each epoch; training stops before the budget is passed, keeps the last completed epoch's model, and
    the report, cost entry and run record say `stopped: budget`. A budget that does not cover the first epoch is an
    error (exit 2). `gates.max_train_usd` stays the after-the-fact gate
    """
    feature_cache: bool = True
    """with `train.finetune: head`, no augmentation (`train.augment` rotation 0, translate 0, scale 1..1, no flip or
    jitter) and one process, the backbone's features are computed once per image and the head trains on them:
    `.frugalml/features/<key>.pt`, and `features/<key>.pt` in the store for the team; keyed by the image's sha256, a
    hash of the backbone's weights, arch, image size and normalisation. Same weights as without it (bitwise on CPU)
    """
    distill_from: str | None = None
    """`registry:<model>@<alias or version>`: knowledge distillation. That model is the teacher; `model.arch` (smaller)
    trains on the loss `alpha * T^2 * KL(teacher/T ‖ student/T) + (1 - alpha) * CE(labels)`. The teacher must know
    the same classes; its input is resized and renormalised when it was trained at another `image_size`, `mean` or
    `std`. `metrics/train.json` names it (`distilled_from`: ref, arch, sha256). Turns the feature cache off (the
    teacher reads the images)
    """
    distill_temperature: float = Field(4.0, gt=0)
    """T above: higher spreads the teacher's probability over the runner-up classes"""
    distill_alpha: float = Field(0.7, ge=0, le=1)
    """weight of the teacher's soft targets (0..1); at 1 the labels play no part"""
    capacity: Literal["on_demand", "spot"] = "on_demand"
    """`on_demand` or `spot`: the train stage's compute is billed at `costs.prices.spot_*` (or
    `orchestration.pool_spot_usd_per_hour`) when spot, and its ledger shows the saving vs on-demand and the work
    lost to interruptions; `train.max_usd` and `frugalml estimate` count at the same rates. Placement on spot nodes
    is the pool's job (infra/k8s/pool-gpu.json's spot affinity)
    """

    @field_validator("distill_from")
    @classmethod
    def _registry_ref(cls, v: str | None) -> str | None:
        if v is not None:
            registry_ref(v)
        return v


def feature_cache_off(t: TrainConfig, world: int = 1) -> str | None:
    """None when the frozen-backbone feature cache applies to this training, else the reason it
    does not (nothing may make the backbone's output vary between epochs)."""
    if not t.feature_cache:
        return "train.feature_cache is false"
    if t.finetune != "head":
        return f"train.finetune is {t.finetune} (the backbone changes as it trains)"
    if t.augment != AugmentConfig(rotation_deg=0, translate=0, scale_min=1, scale_max=1):
        return "train.augment is on (each epoch sees other pixels)"
    if world > 1:
        return "distributed training"
    if t.compile:
        return "train.compile is on"
    if t.distill_from is not None:
        return "train.distill_from is set (the teacher reads the images)"
    return None

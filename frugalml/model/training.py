"""The training loop in parts, in the shape of timm's ``train.py``.

``create_loaders``, ``create_optimizer``, ``create_scheduler``, ``Precision`` (the autocast and
grad-scaler choice, made once), ``train_one_epoch``, ``validate``, ``TrainState`` (what a
checkpoint holds) and ``Checkpointer`` (where it is kept); ``fit`` runs the epochs with them.
The stage adapter ``tasks/train.py`` reads the manifest, builds the model and writes the report.

GPU-ready by construction: no host synchronisation per step. Loss and correct counts are
accumulated on the device and read once per epoch; the progress line reads only wall time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from frugalml.contracts import MANIFEST, MODEL, PREPARED, TRAIN_CURVES, TrainReport, read_manifest
from frugalml.core.config import Params, TrainConfig, dump, registry_ref
from frugalml.core.console import info
from frugalml.core.costs import CostMeter, price
from frugalml.core.errors import ConfigError, DataError, Preempted, StorageError
from frugalml.core.fsutil import atomic_write_bytes, atomic_write_text
from frugalml.core.lineage import file_hash
from frugalml.core.registry import Registry, fetch_model_blob
from frugalml.core.store import Store
from frugalml.model import distillation, features, weights
from frugalml.model.distillation import Teacher
from frugalml.model.modeling import (
    ManifestDataset,
    build_model,
    eval_transform,
    head_module,
    param_groups,
    save_model,
    seed_everything,
    select_device,
    train_transform,
    warm_start,
)
from frugalml.model.trial import TrialLink

CHECKPOINTS = Path(".frugalml") / "checkpoints"
LOG_EVERY_S = 15.0


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


# -- the starting point ---------------------------------------------------------------------------
def effective_train(cfg: Params) -> TrainConfig:
    """``train`` with ``train.warm_start`` applied when starting from a registry model."""
    t = cfg.train
    if not cfg.model.pretrained.startswith("registry:"):
        return t
    return t.model_copy(update={"epochs": t.warm_start.epochs or t.epochs, "lr": t.lr * t.warm_start.lr_mult})


def resolve_pretrained(cfg: Params, meter=None):
    """``model.pretrained: imagenet | torchvision``: the weights file (cache, mirror, package or
    download), its transfer counted in the stage's cost entry. None for the other kinds of start."""
    if not cfg.model.from_imagenet:
        return None
    found = weights.resolve(
        cfg.model.arch,
        store=Store.optional(cfg.storage, tolerate_transient=True),
        url_override=cfg.model.weights_url,
        progress=is_main(),
        kind=cfg.model.pretrained,
    )
    if meter is not None:
        meter.add(weights_download_bytes=found.download_bytes)
        meter.extra["weights_from"] = found.source
    return found


def initial_model(cfg: Params, classes: list[str], meter=None) -> tuple[nn.Module, str, dict]:
    """The model to fine-tune, a one-line description of its start and its lineage."""
    m = cfg.model
    if m.pretrained == "none":
        return build_model(m.arch, len(classes)), "none", {"kind": "none"}
    if m.from_imagenet:
        found = resolve_pretrained(cfg, meter)
        return (
            build_model(m.arch, len(classes), found.state_dict()),
            f"{m.pretrained} {found.file} ({found.source})",
            found.lineage(),
        )
    try:
        name, alias = registry_ref(m.pretrained)
    except ValueError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    store = Store.from_config(cfg.storage)
    version, blob = fetch_model_blob(store, name, alias)
    if blob["arch"] != m.arch:
        raise ConfigError(f"model.pretrained {m.pretrained} is a {blob['arch']}, but model.arch is {m.arch}")
    model = build_model(m.arch, len(classes))
    how = warm_start(model, blob, classes)
    lineage = Registry(store, name).get(version).get("lineage", {})
    return (
        model,
        f"registry:{name}@{version} ({how})",
        {
            "kind": "registry",
            "arch": m.arch,
            "file": f"{name}@{version}",
            "sha256": lineage.get("model_sha256", ""),
            "source": "registry",
            "fine_tuned_from": lineage.get("pretrained"),
        },
    )


# -- data -----------------------------------------------------------------------------------------
def num_workers(setting: int | str, device: torch.device) -> int:
    """``train.num_workers``: ``auto`` = cores - 1 on CUDA (decoding must keep the GPU fed), 0 on
    CPU, where worker processes only compete with the compute for the same cores (measured slower)."""
    if setting != "auto":
        return int(setting)
    if device.type == "cuda":
        return max(1, (os.cpu_count() or 2) - 1)
    return 0


def create_loaders(cfg: Params, rows: list[dict], classes: list[str], root: Path, device: torch.device):
    """Train and validation loaders (a DistributedSampler under DDP) and the shuffling generator."""
    m, t = cfg.model, cfg.train
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not train_rows:
        raise DataError("the train split is empty: add images or change data.splits")
    gen = torch.Generator().manual_seed(t.seed)
    workers = num_workers(t.num_workers, device)
    cuda = device.type == "cuda"
    common = dict(
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        **({"prefetch_factor": 4} if workers > 0 and cuda else {}),
    )
    train_ds = ManifestDataset(train_rows, root, classes, train_transform(m.image_size, *m.norm(), t.augment))
    sampler = None
    if world() > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True, seed=t.seed)
    train = torch.utils.data.DataLoader(
        train_ds, batch_size=t.batch_size, shuffle=sampler is None, sampler=sampler, generator=gen, **common
    )
    val = (
        torch.utils.data.DataLoader(
            ManifestDataset(val_rows, root, classes, eval_transform(m.image_size, *m.norm())),
            batch_size=t.batch_size,
            shuffle=False,
            **common,
        )
        if val_rows
        else None
    )
    return train, val, gen


def class_weights(rows: list[dict], classes: list[str]) -> torch.Tensor:
    counts = torch.zeros(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        if r["split"] == "train":
            counts[index[r["label"]]] += 1
    return counts.sum() / (len(classes) * counts.clamp(min=1))


# -- optimisation ---------------------------------------------------------------------------------
def create_optimizer(groups: list[dict], t: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW, fused (one kernel over all the tensors) on CPU and CUDA: on CPU, AdamW's
    per-tensor loop was ~40% of a resnet18 step at 32 px; fused, its step is 5x faster (13.5
    against 67.7 ms)."""
    device = next((p.device.type for g in groups for p in g["params"]), "cpu")
    fused = {"fused": True} if device in ("cpu", "cuda") else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, **fused)


def create_scheduler(opt: torch.optim.Optimizer, t: TrainConfig, steps: int):
    """One step per batch. OneCycle warms up over 20 % of the steps (at least 2: it divides by
    the warm-up length); runs too short for that use cosine."""
    if t.schedule == "onecycle" and steps >= 4:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=steps,
            pct_start=min(0.5, max(0.2, 2.0 / steps)),
        )
    if t.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@dataclass
class Precision:
    """The numeric format, chosen once: autocast dtype and (fp16 only) the grad scaler."""

    name: str
    dtype: torch.dtype | None = None
    scaler: object | None = None

    @classmethod
    def choose(cls, pref: str, device: torch.device) -> Precision:
        name = pref if pref != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        if name in ("bf16", "fp16") and device.type != "cuda":
            raise ConfigError(f"train.precision={name} needs a CUDA device; use auto or fp32 here")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        return cls(name, dtype, torch.amp.GradScaler("cuda") if name == "fp16" else None)

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype is not None else nullcontext()

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()


def freeze_frozen_norms(net: nn.Module) -> None:
    """Batch-norm layers whose weights are frozen stay in eval mode while the rest trains: a frozen
    backbone keeps its running statistics and normalises as it will at inference (and as the
    feature cache computed its features)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def _accumulator(device: torch.device) -> torch.Tensor:
    """A device-side running sum (float64 where the device has it)."""
    return torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)


# -- the live budget ------------------------------------------------------------------------------
class StopSignal:
    """SIGTERM (a spot notice, a node drain) asks training to stop: checked between steps, like
    the budget. The last completed epoch's checkpoint is already in the store (saved before the
    next epoch starts), so stopping loses only the current epoch's work."""

    def __init__(self) -> None:
        self.at: float | None = None  # when SIGTERM arrived (perf_counter)

    def install(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "at", time.perf_counter()))

    def check(self) -> None:
        if self.at is not None:
            raise Preempted("SIGTERM")


class BudgetReached(Exception):
    """Raised inside an epoch when going on would pass ``train.max_usd``."""


@dataclass
class Budget:
    """``train.max_usd``: checked every ``check_every_s`` during an epoch and before the next one.

    ``spent()`` is what the stage has cost so far (start-up included), priced like its cost entry."""

    max_usd: float
    spent: Callable[[], float]
    check_every_s: float = 0.5
    stopped_at: float | None = None  # the spend when it stopped the training
    _last: float = 0.0
    _last_usd: float = 0.0
    _worst: float = 0.0  # the largest spend between two checks so far

    # Steps and the pauses between epochs (validation, the next loader's start) vary, more so on a
    # busy machine: look ahead by the largest interval seen so far, with half again as margin.
    AHEAD_MARGIN = 1.5

    def check(self) -> None:
        """Stop when the spend at the next check (the largest interval so far, plus a margin) would
        pass the budget."""
        now = time.perf_counter()
        if now - self._last < self.check_every_s:
            return
        usd = self.spent()
        if self._last:
            self._worst = max(self._worst, usd - self._last_usd)
        self._last, self._last_usd = now, usd
        if usd + self.AHEAD_MARGIN * self._worst >= self.max_usd:
            self.stopped_at = usd
            raise BudgetReached(f"${usd:.5f} spent of train.max_usd ${self.max_usd:g}")

    def affords(self, usd_next: float) -> bool:
        """Whether work costing ``usd_next`` (plus a 10% margin for the stage's tail: saving the
        model, the report) still fits."""
        usd = self.spent()
        if usd + 1.1 * usd_next < self.max_usd:
            return True
        self.stopped_at = usd
        return False


# -- one epoch, one validation --------------------------------------------------------------------
@dataclass
class EpochResult:
    loss: float
    acc: float
    seen: int
    seconds: float
    steps: int


def train_one_epoch(
    net: nn.Module,
    loader,
    opt,
    sched,
    loss_fn,
    device: torch.device,
    precision: Precision,
    *,
    channels_last: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    budget: Budget | None = None,
    teacher: nn.Module | None = None,
    stop: StopSignal | None = None,
) -> EpochResult:
    """One pass over ``loader``. ``progress(step, steps, seconds)`` is called about every 15 s;
    ``budget`` is checked between steps (``BudgetReached``). With a ``teacher`` (distillation),
    ``loss_fn(student, labels, teacher_logits)``."""
    net.train()
    freeze_frozen_norms(net)
    loss_sum, correct = _accumulator(device), _accumulator(device)
    seen = steps = 0
    t0 = last_log = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            out = net(x)
            soft = () if teacher is None else (teacher(x).float(),)
            loss = loss_fn(out.float(), y, *soft)
        precision.backward_step(loss, opt)
        sched.step()
        steps += 1
        seen += len(y)
        loss_sum += loss.detach() * len(y)  # stays on the device: no sync per step
        correct += (out.argmax(1) == y).sum()
        if budget is not None:
            budget.check()
        if stop is not None:
            stop.check()
        now = time.perf_counter()
        if progress is not None and now - last_log > LOG_EVERY_S:
            progress(steps, len(loader), now - t0)
            last_log = now
    seconds = time.perf_counter() - t0
    return EpochResult(float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1), seen, seconds, steps)


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device, precision: Precision) -> tuple[float, float]:
    """(accuracy, mean loss) over ``loader``; read from the device once, at the end."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = _accumulator(device), _accumulator(device)
    total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            out = model(x)
        loss += loss_fn(out.float(), y)
        correct += (out.argmax(1) == y).sum()
        total += len(y)
    return float(correct) / max(total, 1), float(loss) / max(total, 1)


# -- checkpoints ----------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where training stands after an epoch: what a checkpoint holds besides the tensors."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    curves: list[str] = field(default_factory=list)
    best: float | None = None
    since_best: int = 0

    def improved(self, metric: float, min_delta: float) -> None:
        if self.best is None or metric > self.best + min_delta:
            self.best, self.since_best = metric, 0
        else:
            self.since_best += 1

    def checkpoint(self, model, opt, sched, gen, precision: Precision) -> dict:
        """Tensors and primitives only: it loads with ``torch.load(..., weights_only=True)``."""
        scaler = {"scaler": precision.scaler.state_dict()} if precision.scaler is not None else {}
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_loader": gen.get_state(),
            **scaler,
            "epoch": self.epoch,
            "step": self.step,
            "history": json.dumps(self.history),
            "curves": json.dumps(self.curves),
            "best": self.best,
            "since_best": self.since_best,
        }

    @classmethod
    def restore(cls, blob: dict, model, opt, sched, gen, precision: Precision) -> TrainState:
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng_torch"])
        gen.set_state(blob["rng_loader"])
        if precision.scaler is not None and "scaler" in blob:
            precision.scaler.load_state_dict(blob["scaler"])
        return cls(
            blob["epoch"],
            blob["step"],
            json.loads(blob["history"]),
            json.loads(blob["curves"]),
            blob["best"],
            blob["since_best"],
        )


def fingerprint(cfg: Params, manifest_sha256: str) -> str:
    """Same inputs -> same fingerprint: a checkpoint is only resumed for the training it belongs to."""
    p = dump(cfg)
    ignored = ("num_workers", "num_threads", "checkpoint_to_s3", "keep_checkpoints", "max_usd", "capacity")
    key = {
        "manifest": manifest_sha256,
        "model": p["model"],
        "train": {k: v for k, v in p["train"].items() if k not in ignored},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Checkpointer:
    """The resume point: locally after every epoch, and under ``checkpoints/<run_id>/`` in S3
    (only the newest epoch is kept there; all of it is deleted when training ends unless
    ``train.keep_checkpoints``: storage is billed per GB-month for as long as it stays)."""

    def __init__(self, cfg: Params, fp: str, run_id: str):
        self.cfg, self.fp, self.run_id = cfg, fp, run_id
        self.local = CHECKPOINTS / fp / "last.pt"
        self.store = Store.optional(cfg.storage, tolerate_transient=True) if cfg.train.checkpoint_to_s3 else None

    def load(self) -> dict | None:
        if self.local.exists():
            return torch.load(self.local, map_location="cpu", weights_only=True)
        if self.store is None:
            return None
        try:
            latest = self.store.get_json(f"checkpoints/{self.run_id}/latest.json")
        except StorageError:
            return None
        if latest.get("fingerprint") != self.fp:
            return None
        self.store.download(latest["key"], self.local)
        return torch.load(self.local, map_location="cpu", weights_only=True)

    def save(self, state: dict, epoch: int) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.local, buf.getvalue())
        if self.store is None:
            return
        key = f"checkpoints/{self.run_id}/epoch-{epoch:04d}.pt"
        try:
            self.store.put_file(key, self.local)
            self.store.put_json(
                f"checkpoints/{self.run_id}/latest.json", {"fingerprint": self.fp, "epoch": epoch, "key": key}
            )
            for o in self.store.list(f"checkpoints/{self.run_id}/epoch-"):  # older epochs are no resume point
                if o["key"] != key:
                    self.store.delete(o["key"])
        except StorageError as exc:  # a lost upload must not cost the epoch: the local copy stays
            info(f"train: warning: checkpoint upload failed ({exc}); kept locally at {self.local}")

    def done(self) -> None:
        self.local.unlink(missing_ok=True)
        if self.store is None or self.cfg.train.keep_checkpoints:
            return
        try:
            for o in self.store.list(f"checkpoints/{self.run_id}/"):
                self.store.delete(o["key"])
        except StorageError as exc:
            info(f"train: warning: could not delete the checkpoints of run {self.run_id} ({exc})")


# -- the epochs -----------------------------------------------------------------------------------
CURVE_COLUMNS = "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,images_per_s"


@dataclass
class Trainer:
    """Everything ``fit`` needs, built once by the stage."""

    model: nn.Module
    net: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    train_loader: object
    val_loader: object | None
    gen: torch.Generator
    opt: torch.optim.Optimizer
    sched: object
    loss_fn: nn.Module
    device: torch.device
    precision: Precision
    t: TrainConfig
    channels_last: bool = False
    budget: Budget | None = None
    eval_net: nn.Module | None = None  # what validation runs (the head alone on cached features)
    cached: int | None = None  # images whose features came from the feature cache; None = no cache
    trial: TrialLink | None = None  # a sweep trial: report each epoch's val accuracy, stop when pruned
    teacher: Teacher | None = None  # train.distill_from: the model whose soft targets the loss follows
    stop: StopSignal | None = None  # SIGTERM: stop between steps (one process only)

    def dataset_size(self) -> int:
        return len(self.train_loader.dataset) + (len(self.val_loader.dataset) if self.val_loader is not None else 0)

    def progress(self, epoch: int) -> Callable[[int, int, float], None] | None:
        if not is_main():
            return None

        def log(step: int, steps: int, seconds: float) -> None:
            rate = step * self.t.batch_size * world() / seconds
            info(
                f"train: epoch {epoch}/{self.t.epochs} step {step}/{steps} | {rate:.0f} img/s, "
                f"epoch ETA {(steps - step) * seconds / step:.0f} s"
            )

        return log

    def shared_validation(self) -> tuple[float, float]:
        """Validation on rank 0, broadcast so that every rank takes the same early-stopping decision."""
        acc, loss = float("nan"), float("nan")
        if self.val_loader is not None and is_main():
            acc, loss = validate(self.eval_net or self.model, self.val_loader, self.device, self.precision)
        if world() > 1:
            shared = torch.tensor([acc, loss], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, src=0)
            acc, loss = float(shared[0]), float(shared[1])
        return acc, loss

    def record(self, state: TrainState, epoch: int, res: EpochResult, val_acc: float, val_loss: float) -> dict:
        ips = res.seen * world() / res.seconds if res.seconds > 0 else 0.0
        rec = {
            "epoch": epoch,
            "train_loss": res.loss,
            "train_acc": res.acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images_per_s": ips,
            "images": res.seen * world(),
        }
        state.epoch, state.step = epoch, state.step + res.steps
        state.history.append(rec)
        state.curves.append(
            f"{epoch},{state.step},{res.loss:.6f},{res.acc:.6f},{val_loss:.6f},"
            f"{val_acc:.6f},{self.sched.get_last_lr()[0]:.6g},{ips:.1f}"
        )
        es = self.t.early_stopping
        state.improved(val_acc if es.metric == "val_acc" else -val_loss, es.min_delta)
        return rec


def _budget_allows_next(tr: Trainer, epoch_usd: float) -> bool:
    """Whether another epoch like the last fits in the budget (rank 0 decides for every rank)."""
    ok = tr.budget is None or tr.budget.affords(epoch_usd)
    if world() > 1:
        flag = torch.tensor([1.0 if ok else 0.0], device=tr.device)
        dist.broadcast(flag, src=0)
        ok = bool(flag.item())
    return ok


def _epoch(tr: Trainer, epoch: int) -> EpochResult:
    if world() > 1:
        tr.train_loader.sampler.set_epoch(epoch)
    return train_one_epoch(
        tr.net,
        tr.train_loader,
        tr.opt,
        tr.sched,
        tr.loss_fn,
        tr.device,
        tr.precision,
        channels_last=tr.channels_last,
        progress=tr.progress(epoch),
        budget=tr.budget if world() == 1 else None,  # under DDP: checked between epochs only
        teacher=tr.teacher.net if tr.teacher is not None else None,
        stop=tr.stop,
    )


def _stop_on_budget(tr: Trainer, state: TrainState, ckpt: Checkpointer, why: str) -> None:
    """The budget ran out inside an epoch: go back to the last completed epoch's weights."""
    if state.epoch == 0:
        raise ConfigError(
            f"train.max_usd: the budget ran out during the first epoch ({why}); raise train.max_usd "
            "or make the run cheaper (`frugalml estimate` prices it before a run)"
        )
    tr.model.load_state_dict(ckpt.load()["model"])
    info(f"train: budget reached in epoch {state.epoch + 1} ({why}); keeping epoch {state.epoch}'s model")


def fit(tr: Trainer, state: TrainState, ckpt: Checkpointer) -> tuple[TrainState, str, float]:
    """Epochs ``state.epoch + 1 .. t.epochs``: train, validate, checkpoint, early stop, budget stop.
    Returns the final state, why it stopped (completed, early_stopping, budget, pruned) and the wall seconds."""
    t, first = tr.t, state.epoch + 1
    t_start = time.perf_counter()
    epoch_usd = 0.0
    for epoch in range(first, t.epochs + 1):
        if epoch > first and not _budget_allows_next(tr, epoch_usd):
            if is_main():
                info(f"train: stopping before epoch {epoch}: it would pass train.max_usd ${t.max_usd:g}")
            return state, "budget", time.perf_counter() - t_start
        usd0 = tr.budget.spent() if tr.budget is not None else 0.0
        epoch_start = time.perf_counter()
        try:
            res = _epoch(tr, epoch)
        except Preempted:
            now = time.perf_counter()
            lost = now - epoch_start
            raise Preempted(
                f"stopped by SIGTERM in epoch {epoch} ({lost:.1f} s of it lost); "
                + (f"epoch {state.epoch}'s checkpoint is in the store" if state.epoch else "no epoch was complete")
                + ": a retry of the stage resumes from it",
                # an attempt that saved no checkpoint of its own was lost whole (start-up and resume included)
                lost_s=lost if epoch > first else None,
                fit_s=now - t_start,
            ) from None
        except BudgetReached as exc:
            _stop_on_budget(tr, state, ckpt, str(exc))
            return state, "budget", time.perf_counter() - t_start
        val_acc, val_loss = tr.shared_validation()
        rec = tr.record(state, epoch, res, val_acc, val_loss)
        # the dearest epoch so far, validation and checkpoint included: a conservative forecast
        epoch_usd = max(epoch_usd, tr.budget.spent() - usd0) if tr.budget is not None else 0.0
        if is_main():
            eta = (time.perf_counter() - t_start) / (epoch - first + 1) * (t.epochs - epoch)
            info(
                f"train: epoch {epoch}/{t.epochs} loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f} "
                f"val_acc {val_acc:.3f} | {rec['images_per_s']:.0f} img/s, ETA {eta:.0f} s"
            )
            ckpt.save(state.checkpoint(tr.model, tr.opt, tr.sched, tr.gen, tr.precision), epoch)
        es = t.early_stopping
        if es.patience and state.since_best >= es.patience and tr.val_loader is not None:
            if is_main():
                info(f"train: early stop after epoch {epoch}: no {es.metric} gain for {es.patience} epochs")
            return state, "early_stopping", time.perf_counter() - t_start
        if tr.trial is not None and epoch < t.epochs and tr.trial.should_prune(epoch, val_acc):
            info(f"train: the sweep's pruner stopped this trial after epoch {epoch} (val_acc {val_acc:.3f})")
            return state, "pruned", time.perf_counter() - t_start
    return state, "completed", time.perf_counter() - t_start


def fit_quietly(tr: Trainer) -> float:
    """Every epoch of ``tr`` with nothing around it (no checkpoint, budget, pruner or early stop):
    the validation accuracy at the end. What the sweep's screen needs of a head-only training."""
    for epoch in range(1, tr.t.epochs + 1):
        _epoch(tr, epoch)
    return tr.shared_validation()[0]


def _device(t: TrainConfig) -> torch.device:
    device = select_device(t.device)
    if world() > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


def _feature_loaders(cfg: Params, model: nn.Module, rows: list[dict], classes: list[str], device: torch.device):
    """Loaders over cached backbone features (train shuffled by the seeded generator, val in order)."""
    t = cfg.train
    store = Store.optional(cfg.storage, tolerate_transient=True)
    index = {c: i for i, c in enumerate(classes)}
    loaders, cached = [], 0
    gen = torch.Generator().manual_seed(t.seed)
    for split in ("train", "val"):
        part = [r for r in rows if r["split"] == split]
        if not part:
            if split == "train":
                raise DataError("the train split is empty: add images or change data.splits")
            loaders.append(None)
            continue
        feats, n = features.features_for(model, part, PREPARED, cfg, device, store)
        cached += n
        ds = torch.utils.data.TensorDataset(feats, torch.tensor([index[r["label"]] for r in part]))
        shuffle = split == "train"  # only the train loader draws from the seeded generator, as without the cache
        loader_gen = gen if shuffle else None
        loaders.append(torch.utils.data.DataLoader(ds, batch_size=t.batch_size, shuffle=shuffle, generator=loader_gen))
    return loaders[0], loaders[1], gen, cached


def build_trainer(
    cfg: Params, rows: list[dict], classes: list[str], device: torch.device, meter
) -> tuple[Trainer, str, dict]:
    """The model, loaders, optimizer, schedule, loss and precision, in the order that keeps
    CPU training bitwise reproducible (the head's initialisation draws from the seeded RNG)."""
    t = effective_train(cfg)
    no_cache = features.why_not(cfg, world())
    if no_cache is None:
        model, start, pretrained = initial_model(cfg, classes, meter)
        model.to(device)
        train_loader, val_loader, gen, cached = _feature_loaders(cfg, model, rows, classes, device)
    else:
        train_loader, val_loader, gen = create_loaders(cfg, rows, classes, PREPARED, device)
        model, start, pretrained = initial_model(cfg, classes, meter)
        cached = None
    groups = param_groups(model, t.finetune, t.finetune_last_n, t.lr, t.backbone_lr_mult)
    model.to(device)
    channels_last = device.type == "cuda" and t.channels_last and cached is None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = create_optimizer(groups, t)
    sched = create_scheduler(opt, t, t.epochs * len(train_loader))
    weights = class_weights(rows, classes).to(device) if t.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing)
    teacher = distillation.load_teacher(cfg, classes, device)
    if teacher is not None:
        loss_fn = distillation.DistillLoss(loss_fn, t.distill_temperature, t.distill_alpha)
    net = model if cached is None else head_module(model)[1]  # cached: the head alone trains
    if world() > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)
    tr = Trainer(
        model,
        net,
        train_loader,
        val_loader,
        gen,
        opt,
        sched,
        loss_fn,
        device,
        Precision.choose(t.precision, device),
        t,
        channels_last,
        eval_net=None if cached is None else net,
        cached=cached,
        teacher=teacher,
    )
    if t.finetune == "head" and no_cache is not None and t.feature_cache and is_main():
        info(f"train: no feature cache: {no_cache}")
    return tr, start, pretrained


def _report(
    tr: Trainer,
    state: TrainState,
    *,
    arch: str,
    start: str,
    pretrained: dict,
    stopped: str,
    wall: float,
    gpu_s: float,
    classes: int,
) -> TrainReport:
    last, t = state.history[-1], tr.t
    return TrainReport(
        arch=arch,
        device=tr.device.type,
        precision=tr.precision.name,
        processes=world(),
        start=start,
        pretrained=pretrained,
        finetune=t.finetune,
        epochs=t.epochs,
        epochs_run=len(state.history),
        stopped_early=stopped == "early_stopping",
        stopped=stopped,
        max_usd=t.max_usd,
        usd_when_stopped=round(tr.budget.stopped_at, 6) if tr.budget and tr.budget.stopped_at else None,
        feature_cache="off" if tr.cached is None else f"on ({tr.cached} of {tr.dataset_size()} cached)",
        distilled_from=tr.teacher.lineage() if tr.teacher is not None else None,
        classes=classes,
        train_images=len(tr.train_loader.dataset),
        loader_workers=tr.train_loader.num_workers,
        final_train_loss=round(last["train_loss"], 6),
        final_train_acc=round(last["train_acc"], 6),
        final_val_acc=round(last["val_acc"], 6),
        images_per_s=round(sum(h["images_per_s"] for h in state.history) / len(state.history), 1),
        train_wall_s=round(wall, 2),
        gpu_s=round(gpu_s, 2),
        parameters=sum(p.numel() for p in tr.model.parameters()),
        trainable_parameters=sum(p.numel() for p in tr.model.parameters() if p.requires_grad),
    )


def budget_for(cfg: Params, device: torch.device, started: float) -> Budget | None:
    """``train.max_usd`` as a live check: the stage's compute (wall x vCPUs) and GPU time since
    ``started`` (epoch seconds, when the stage process started), priced by the price sheet at
    ``train.capacity``'s rates."""
    if cfg.train.max_usd is None:
        return None
    gpus = world() if device.type == "cuda" else 0

    def spent() -> float:
        wall = time.time() - started
        return price({"wall_s": wall, "gpu_s": wall * gpus}, cfg.costs, cfg.train.capacity)["total_usd"]

    return Budget(cfg.train.max_usd, spent)


def train(cfg: Params, meter: CostMeter | None, run_id: str, started: float | None = None) -> TrainReport | None:
    """Fine-tune, resuming from a checkpoint of the same inputs; write the model and the curves.

    ``started``: when the stage began (epoch seconds), what ``train.max_usd`` counts from.
    Returns the report on rank 0 (None on the other DDP ranks); the caller writes it."""
    started = started if started is not None else time.time() - (meter.elapsed_s() if meter else 0.0)
    m, t = cfg.model, effective_train(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = _device(t)
    seed_everything(t.seed)
    rows = read_manifest()
    if not rows:
        raise DataError("data/manifest.csv is missing or empty: run the ingest stage first")
    classes = sorted({r["label"] for r in rows})
    tr, start, pretrained = build_trainer(cfg, rows, classes, device, meter)
    teacher_id = tr.teacher.ref if tr.teacher is not None else ""  # an alias may move to another version
    ckpt = Checkpointer(cfg, fingerprint(cfg, file_hash(MANIFEST) + teacher_id), run_id)
    state, blob = TrainState(), ckpt.load()
    resumed_s = 0.0  # a resumed attempt's time until the resume: paid again because of the interruption
    if blob is not None:
        state = TrainState.restore(blob, tr.model, tr.opt, tr.sched, tr.gen, tr.precision)
        if is_main():
            info(f"train: resuming after epoch {state.epoch} from checkpoint {ckpt.local}")
        if meter is not None:
            resumed_s = meter.elapsed_s()
            meter.add(lost_s=round(resumed_s, 3))
    if is_main():
        info(
            f"train: {m.arch} on {device.type} ({tr.precision.name}), {len(classes)} classes, "
            f"{len(tr.train_loader.dataset)} train images, {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, "
            f"finetune={t.finetune}, start={start}"
            + (f", {world()} processes" if world() > 1 else "")
            + (f", distilled from {tr.teacher.ref} ({tr.teacher.arch})" if tr.teacher is not None else "")
        )
    tr.budget = budget_for(cfg, device, started)
    tr.trial = TrialLink.from_env() if world() == 1 else None
    if world() == 1:
        tr.stop = StopSignal()
        tr.stop.install()
    try:
        state, stopped, wall = fit(tr, state, ckpt)
    except Preempted as exc:
        if meter is not None:  # the ledger of an interrupted attempt: what it used, and what of it was lost
            meter.add(gpu_s=exc.fit_s if device.type == "cuda" else 0.0)
            meter.add(lost_s=round(exc.lost_s if exc.lost_s is not None else meter.elapsed_s() - resumed_s, 3))
        raise
    if world() > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not is_main():
        return None
    gpu_s = wall * world() if device.type == "cuda" else 0.0
    if meter is not None:
        meter.add(gpu_s=gpu_s, image_epochs=sum(h.get("images", 0) for h in state.history))
        meter.add(features_cached=tr.cached or 0)
        meter.extra["stopped"] = stopped
    model = tr.model.to("cpu").to(memory_format=torch.contiguous_format)
    mean, std = m.norm()
    save_model(MODEL, model, classes=classes, arch=m.arch, image_size=m.image_size, mean=mean, std=std)
    atomic_write_text(TRAIN_CURVES, "\n".join([CURVE_COLUMNS, *state.curves]) + "\n")
    report = _report(
        tr,
        state,
        arch=m.arch,
        start=start,
        pretrained=pretrained,
        stopped=stopped,
        wall=wall,
        gpu_s=gpu_s,
        classes=len(classes),
    )
    ckpt.done()
    return report

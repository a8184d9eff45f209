"""The epochs: ``train_one_epoch``, ``validate``, and ``fit``, which runs them with validation,
checkpoints, early stopping, the live budget and the sweep's pruner.

GPU-ready by construction: no host synchronisation per step. Loss and correct counts are
accumulated on the device and read once per epoch; the progress line reads only wall time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from frugalml.core.config import TrainConfig
from frugalml.core.console import info
from frugalml.core.errors import ConfigError, Preempted
from frugalml.model.budget import Budget, BudgetReached, StopSignal
from frugalml.model.checkpoint import Checkpointer, TrainState
from frugalml.model.distillation import Teacher
from frugalml.model.parts import LOG_EVERY_S, Precision, _accumulator, freeze_frozen_norms, is_main, world
from frugalml.model.trial import TrialLink


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

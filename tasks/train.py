"""Stage train: fine-tune a torchvision backbone on the prepared images.

Writes ``models/model.pt`` (weights + everything needed to serve them), ``metrics/train.json``
and the learning curves in ``plots/train.csv``. The loop itself is ``frugalml.training``.

* Pretrained start (``model.pretrained``): ``none``, ``torchvision`` (hub cache, team mirror or
  download: ``frugalml.weights``; file and sha256 in the report's ``pretrained``) or
  ``registry:<model>@<alias or version>`` (warm start; the head is re-initialised when the
  classes changed).
* Fine-tuning: ``head``, ``last_n`` blocks or ``full``; the head and the backbone get their
  own learning rates.
* Determinism: with ``train.seed`` fixed, CPU training is bitwise reproducible.
* Resume: a checkpoint after every epoch (locally, and under ``checkpoints/<run_id>/`` in S3).
  A restarted stage with the same inputs resumes from it and ends with the same weights.
* ``train.distributed.nproc_per_node > 1`` relaunches the stage under ``torchrun`` (DDP:
  gloo on CPU, nccl on GPU); rank 0 writes the outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

from frugalml import training
from frugalml.config import Params
from frugalml.console import info
from frugalml.contracts import (
    MANIFEST,
    MODEL,
    PREPARED,
    TRAIN_CURVES,
    TRAIN_REPORT,
    Pretrained,
    TrainReport,
    read_manifest,
)
from frugalml.costs import CostMeter
from frugalml.errors import DataError, FrugalError
from frugalml.fsutil import atomic_write_text
from frugalml.lineage import file_hash
from frugalml.modeling import param_groups, save_model, seed_everything, select_device
from frugalml.training import CURVE_COLUMNS, Checkpointer, Precision, Trainer, TrainState, is_main, world

REPORT = TRAIN_REPORT
CURVES = TRAIN_CURVES


def _launch_torchrun(cfg: Params) -> None:
    n = cfg.train.distributed.nproc_per_node
    info(f"train: launching {n} processes with torchrun (DDP)")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "tasks.train",
        "--ddp-worker",
    ]
    code = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    if code != 0:
        raise FrugalError(f"distributed training failed (torchrun exit code {code}); see the log above")


def _device(t) -> torch.device:
    device = select_device(t.device)
    if world() > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


def _trainer(
    cfg: Params, rows: list[dict], classes: list[str], device: torch.device, meter
) -> tuple[Trainer, str, dict]:
    """The model, loaders, optimizer, schedule, loss and precision, in the order that keeps
    CPU training bitwise reproducible (the head's initialisation draws from the seeded RNG)."""
    t = training.effective_train(cfg)
    train_loader, val_loader, gen = training.create_loaders(cfg, rows, classes, PREPARED, device)
    model, start, pretrained = training.initial_model(cfg, classes, meter)
    groups = param_groups(model, t.finetune, t.finetune_last_n, t.lr, t.backbone_lr_mult)
    model.to(device)
    channels_last = device.type == "cuda" and t.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = training.create_optimizer(groups, t)
    sched = training.create_scheduler(opt, t, t.epochs * len(train_loader))
    weights = training.class_weights(rows, classes).to(device) if t.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing)
    net = model
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
    )
    return tr, start, pretrained


def _report(
    tr: Trainer,
    state: TrainState,
    *,
    arch: str,
    start: str,
    pretrained: dict,
    stopped_early: bool,
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
        stopped_early=stopped_early,
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


def train(cfg: Params, meter: CostMeter | None) -> TrainReport | None:
    from tasks._stage import run_id

    m, t = cfg.model, training.effective_train(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = _device(t)
    seed_everything(t.seed)
    rows = read_manifest()
    if not rows:
        raise DataError("data/manifest.csv is missing or empty: run the ingest stage first")
    classes = sorted({r["label"] for r in rows})
    tr, start, pretrained = _trainer(cfg, rows, classes, device, meter)
    ckpt = Checkpointer(cfg, training.fingerprint(cfg, file_hash(MANIFEST)), run_id())
    state, blob = TrainState(), ckpt.load()
    if blob is not None:
        state = TrainState.restore(blob, tr.model, tr.opt, tr.sched, tr.gen, tr.precision)
        if is_main():
            info(f"train: resuming after epoch {state.epoch} from checkpoint {ckpt.local}")
    if is_main():
        info(
            f"train: {m.arch} on {device.type} ({tr.precision.name}), {len(classes)} classes, "
            f"{len(tr.train_loader.dataset)} train images, {t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, "
            f"finetune={t.finetune}, start={start}" + (f", {world()} processes" if world() > 1 else "")
        )
    state, stopped_early, wall = training.fit(tr, state, ckpt)
    if world() > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if not is_main():
        return None
    gpu_s = wall * world() if device.type == "cuda" else 0.0
    if meter is not None:
        meter.add(gpu_s=gpu_s)
    model = tr.model.to("cpu").to(memory_format=torch.contiguous_format)
    save_model(MODEL, model, classes=classes, arch=m.arch, image_size=m.image_size, mean=m.mean, std=m.std)
    atomic_write_text(CURVES, "\n".join([CURVE_COLUMNS, *state.curves]) + "\n")
    report = _report(
        tr,
        state,
        arch=m.arch,
        start=start,
        pretrained=pretrained,
        stopped_early=stopped_early,
        wall=wall,
        gpu_s=gpu_s,
        classes=len(classes),
    )
    report.write()
    ckpt.done()
    return report


def run(cfg: Params, meter: CostMeter) -> TrainReport | None:
    if cfg.train.distributed.nproc_per_node > 1:
        found = training.resolve_pretrained(cfg, meter)  # once, here: the workers then read the local cache
        _launch_torchrun(cfg)  # the workers' CPU time is counted: they are this process's children
        report = TrainReport.read()
        if found is not None:
            report.pretrained = Pretrained(**found.lineage())
            report.write()
        meter.add(gpu_s=report.gpu_s)
        return report
    return train(cfg, meter)


def main() -> None:
    if "--ddp-worker" in sys.argv:
        from frugalml import config

        try:
            train(config.load(), None)
        except FrugalError as exc:
            print(f"train (rank {training.rank()}): {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        return
    from tasks._stage import stage_main

    stage_main("train", run)


if __name__ == "__main__":
    main()

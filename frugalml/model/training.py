"""The train stage: the starting point (pretrained weights, the model), the trainer built from its
parts (``parts``, ``budget``, ``checkpoint``), ``fit`` (``loop``), the model file and the report.
The stage adapter ``tasks/train.py`` reads the config and writes the report."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

from frugalml.contracts import MANIFEST, MODEL, PREPARED, TRAIN_CURVES, TrainReport, read_manifest
from frugalml.core.config import Params, TrainConfig, registry_ref
from frugalml.core.console import info
from frugalml.core.costs import CostMeter
from frugalml.core.errors import ConfigError, DataError, Preempted
from frugalml.core.fsutil import atomic_write_text
from frugalml.core.lineage import file_hash
from frugalml.core.registry import Registry, fetch_model_blob
from frugalml.core.store import Store
from frugalml.model import distillation, features, weights
from frugalml.model.budget import StopSignal, budget_for
from frugalml.model.checkpoint import Checkpointer, TrainState, fingerprint
from frugalml.model.loop import CURVE_COLUMNS, Trainer, fit
from frugalml.model.modeling import (
    build_model,
    head_module,
    param_groups,
    save_model,
    seed_everything,
    select_device,
    warm_start,
)
from frugalml.model.parts import (
    Precision,
    class_weights,
    create_loaders,
    create_optimizer,
    create_scheduler,
    is_main,
    world,
)
from frugalml.model.trial import TrialLink


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
    state, resumed_s = _resume(tr, ckpt, meter)
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
    _save(tr, state, cfg, classes)
    report = _report(
        tr, state, arch=m.arch, start=start, pretrained=pretrained, stopped=stopped, wall=wall, gpu_s=gpu_s,
        classes=len(classes),
    )  # fmt: skip
    ckpt.done()
    return report


def _resume(tr: Trainer, ckpt: Checkpointer, meter: CostMeter | None) -> tuple[TrainState, float]:
    """The state to start from (a checkpoint of the same inputs, or the beginning), and the time
    the resumed attempt had spent until the resume: paid again because of the interruption."""
    blob = ckpt.load()
    if blob is None:
        return TrainState(), 0.0
    state = TrainState.restore(blob, tr.model, tr.opt, tr.sched, tr.gen, tr.precision)
    if is_main():
        info(f"train: resuming after epoch {state.epoch} from checkpoint {ckpt.local}")
    resumed_s = 0.0
    if meter is not None:
        resumed_s = meter.elapsed_s()
        meter.add(lost_s=round(resumed_s, 3))
    return state, resumed_s


def _save(tr: Trainer, state: TrainState, cfg: Params, classes: list[str]) -> None:
    """The model file (CPU, contiguous) and the learning curves."""
    m = cfg.model
    model = tr.model.to("cpu").to(memory_format=torch.contiguous_format)
    mean, std = m.norm()
    save_model(MODEL, model, classes=classes, arch=m.arch, image_size=m.image_size, mean=mean, std=std)
    atomic_write_text(TRAIN_CURVES, "\n".join([CURVE_COLUMNS, *state.curves]) + "\n")

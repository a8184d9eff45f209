"""Stage train: fine-tune a torchvision backbone on the prepared images.

Writes ``models/model.pt`` (weights + everything needed to serve them), ``metrics/train.json``
and the learning curves in ``plots/train.csv``.

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

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from frugalml.config import Params, dump
from frugalml.console import info
from frugalml.costs import CostMeter
from frugalml.errors import ConfigError, DataError, FrugalError
from frugalml.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from frugalml.lineage import file_hash
from frugalml.modeling import (
    ManifestDataset, build_model, eval_transform, param_groups, save_model, seed_everything, select_device,
    train_transform, warm_start,
)
from tasks.ingest import MANIFEST, PREPARED, read_manifest

MODEL = Path("models/model.pt")
REPORT = Path("metrics/train.json")
CURVES = Path("plots/train.csv")
CHECKPOINTS = Path(".frugalml") / "checkpoints"
CURVE_COLUMNS = "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,images_per_s"


# -- distributed --------------------------------------------------------------------------------
def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return _rank() == 0


def _launch_torchrun(cfg: Params) -> None:
    n = cfg.train.distributed.nproc_per_node
    info(f"train: launching {n} processes with torchrun (DDP)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "tasks.train", "--ddp-worker"]
    code = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    if code != 0:
        raise FrugalError(f"distributed training failed (torchrun exit code {code}); see the log above")


# -- data -----------------------------------------------------------------------------------------
def _loaders(cfg: Params, rows: list[dict], classes: list[str]):
    m, t = cfg.model, cfg.train
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not train_rows:
        raise DataError("the train split is empty: add images or change data.splits")
    gen = torch.Generator().manual_seed(t.seed)
    common = dict(num_workers=t.num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=t.num_workers > 0)
    train_ds = ManifestDataset(train_rows, PREPARED, classes, train_transform(m.image_size, m.mean, m.std, t.augment))
    sampler = None
    if _world() > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True, seed=t.seed)
    train = torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, shuffle=sampler is None,
                                        sampler=sampler, generator=gen, **common)
    val = torch.utils.data.DataLoader(
        ManifestDataset(val_rows, PREPARED, classes, eval_transform(m.image_size, m.mean, m.std)),
        batch_size=t.batch_size, shuffle=False, **common) if val_rows else None
    return train, val, gen


@torch.no_grad()
def _evaluate(model, loader, device, autocast) -> tuple[float, float]:
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    correct = total = 0
    loss = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        loss += float(loss_fn(out.float(), y))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1), loss / max(total, 1)


# -- model ----------------------------------------------------------------------------------------
def _store_or_none(cfg: Params):
    """The object store when one is configured (the weights mirror, checkpoints), else None."""
    from frugalml.errors import StorageError
    from frugalml.store import Store

    try:
        return Store.from_config(cfg.storage)
    except StorageError:
        return None


def resolve_pretrained(cfg: Params, meter: CostMeter | None):
    """``model.pretrained: torchvision``: the weights file (cache, mirror or download), its
    transfer counted in the stage's cost entry. None for the other kinds of start."""
    if cfg.model.pretrained != "torchvision":
        return None
    from frugalml import weights

    found = weights.resolve(cfg.model.arch, store=_store_or_none(cfg), url_override=cfg.model.weights_url,
                            progress=_is_main())
    if meter is not None:
        meter.add(weights_download_bytes=found.download_bytes)
        meter.extra["weights_from"] = found.source
    return found


def _initial_model(cfg: Params, classes: list[str], meter: CostMeter | None) -> tuple[nn.Module, str, dict]:
    """The model to fine-tune, a one-line description of its start and its lineage."""
    m = cfg.model
    if m.pretrained == "none":
        return build_model(m.arch, len(classes)), "none", {"kind": "none"}
    if m.pretrained == "torchvision":
        found = resolve_pretrained(cfg, meter)
        return (build_model(m.arch, len(classes), found.state_dict()), f"torchvision {found.file} ({found.source})",
                found.lineage())
    ref = m.pretrained[len("registry:"):]
    name, _, alias = ref.partition("@")
    if not name or not alias:
        raise ConfigError("model.pretrained must look like registry:<model>@<alias or version>")
    from frugalml.registry import Registry, fetch_model_blob
    from frugalml.store import Store

    store = Store.from_config(cfg.storage)
    version, blob = fetch_model_blob(store, name, alias)
    if blob["arch"] != m.arch:
        raise ConfigError(f"model.pretrained {m.pretrained} is a {blob['arch']}, but model.arch is {m.arch}")
    model = build_model(m.arch, len(classes))
    how = warm_start(model, blob, classes)
    record = Registry(store, name).get(version)
    lineage = {"kind": "registry", "arch": m.arch, "file": f"{name}@{version}",
               "sha256": record.get("lineage", {}).get("model_sha256", ""), "source": "registry",
               "fine_tuned_from": record.get("lineage", {}).get("pretrained")}
    return model, f"registry:{name}@{version} ({how})", lineage


def _class_weights(rows: list[dict], classes: list[str]) -> torch.Tensor:
    counts = torch.zeros(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        if r["split"] == "train":
            counts[index[r["label"]]] += 1
    return counts.sum() / (len(classes) * counts.clamp(min=1))


# -- checkpoints ----------------------------------------------------------------------------------
def fingerprint(cfg: Params) -> str:
    """Same inputs -> same fingerprint: a checkpoint is only resumed for the training it belongs to."""
    p = dump(cfg)
    key = {"manifest": file_hash(MANIFEST), "model": p["model"],
           "train": {k: v for k, v in p["train"].items() if k not in ("num_workers", "num_threads", "checkpoint_to_s3", "keep_checkpoints")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Checkpointer:
    def __init__(self, cfg: Params, fp: str, run_id: str):
        self.cfg, self.fp, self.run_id = cfg, fp, run_id
        self.local = CHECKPOINTS / fp / "last.pt"
        # no object store configured: local checkpoints only
        self.store = _store_or_none(cfg) if cfg.train.checkpoint_to_s3 else None

    def load(self) -> dict | None:
        if self.local.exists():
            return torch.load(self.local, map_location="cpu", weights_only=True)
        if self.store is not None:
            from frugalml.errors import StorageError

            try:
                latest = self.store.get_json(f"checkpoints/{self.run_id}/latest.json")
            except StorageError:
                return None
            if latest.get("fingerprint") == self.fp:
                self.store.download(latest["key"], self.local)
                return torch.load(self.local, map_location="cpu", weights_only=True)
        return None

    def save(self, state: dict, epoch: int) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.local, buf.getvalue())
        if self.store is not None:
            from frugalml.errors import StorageError

            key = f"checkpoints/{self.run_id}/epoch-{epoch:04d}.pt"
            try:
                self.store.put_file(key, self.local)
                self.store.put_json(f"checkpoints/{self.run_id}/latest.json",
                                    {"fingerprint": self.fp, "epoch": epoch, "key": key})
                # only the newest epoch is a resume point: older ones are deleted once it is published
                for o in self.store.list(f"checkpoints/{self.run_id}/epoch-"):
                    if o["key"] != key:
                        self.store.delete(o["key"])
            except StorageError as exc:  # a lost upload must not cost the epoch: local copy stays
                info(f"train: warning: checkpoint upload failed ({exc}); kept locally at {self.local}")

    def done(self) -> None:
        """Training finished: the resume point has served its purpose. The S3 copy is deleted
        unless ``train.keep_checkpoints`` (storage is billed per GB-month for as long as it stays)."""
        self.local.unlink(missing_ok=True)
        if self.store is not None and not self.cfg.train.keep_checkpoints:
            from frugalml.errors import StorageError

            try:
                for o in self.store.list(f"checkpoints/{self.run_id}/"):
                    self.store.delete(o["key"])
            except StorageError as exc:
                info(f"train: warning: could not delete the checkpoints of run {self.run_id} ({exc})")


# -- the loop -------------------------------------------------------------------------------------
def effective_train(cfg: Params):
    """``train`` with ``train.warm_start`` applied when starting from a registry model."""
    t = cfg.train
    if not cfg.model.pretrained.startswith("registry:"):
        return t
    return t.model_copy(update={"epochs": t.warm_start.epochs or t.epochs, "lr": t.lr * t.warm_start.lr_mult})


def train(cfg: Params, meter: CostMeter | None) -> dict:
    from tasks._stage import run_id

    m, t = cfg.model, effective_train(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    distributed = _world() > 1
    device = select_device(t.device)
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    seed_everything(t.seed)
    rows = read_manifest()
    if not rows:
        raise DataError("data/manifest.csv is missing or empty: run the ingest stage first")
    classes = sorted({r["label"] for r in rows})
    train_loader, val_loader, gen = _loaders(cfg, rows, classes)
    model, start, pretrained = _initial_model(cfg, classes, meter)
    groups = param_groups(model, t.finetune, t.finetune_last_n, t.lr, t.backbone_lr_mult)
    model.to(device)
    if device.type == "cuda" and t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    steps = t.epochs * len(train_loader)
    if t.schedule == "onecycle" and steps >= 4:
        # warm-up over 20 % of the steps, at least 2 steps (OneCycleLR divides by the warm-up length)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=min(0.5, max(0.2, 2.0 / steps)))
    elif t.schedule in ("cosine", "onecycle"):  # onecycle needs a few steps; tiny runs use cosine
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    weights = _class_weights(rows, classes).to(device) if t.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing)

    precision = t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError(f"train.precision={precision} needs a CUDA device; use auto or fp32 here")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast():
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()

    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    ckpt = Checkpointer(cfg, fingerprint(cfg), run_id())
    first_epoch, history, curves, best, since_best, step = 1, [], [], None, 0, 0
    state = ckpt.load()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        gen.set_state(state["rng_loader"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        first_epoch, step = state["epoch"] + 1, state["step"]
        history, curves = json.loads(state["history"]), json.loads(state["curves"])
        best, since_best = state["best"], state["since_best"]
        if _is_main():
            info(f"train: resuming after epoch {state['epoch']} from checkpoint {ckpt.local}")

    n_train = len(train_loader.dataset)
    if _is_main():
        info(f"train: {m.arch} on {device.type} ({precision}), {len(classes)} classes, {n_train} train images, "
             f"{t.epochs} epochs, batch {t.batch_size}, lr {t.lr:g}, finetune={t.finetune}, start={start}"
             + (f", {_world()} processes" if distributed else ""))
    t_start = time.perf_counter()
    stopped_early = False
    for epoch in range(first_epoch, t.epochs + 1):
        net.train()
        if distributed:
            train_loader.sampler.set_epoch(epoch)
        t0 = last_log = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        for i, (x, y) in enumerate(train_loader, 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda" and t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = net(x)
                loss = loss_fn(out.float(), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((out.argmax(1) == y).sum())
            now = time.perf_counter()
            if _is_main() and now - last_log > 15:
                rate = seen / (now - t0)
                left = (len(train_loader) - i) * (now - t0) / i
                info(f"train: epoch {epoch}/{t.epochs} step {i}/{len(train_loader)} | {rate * _world():.0f} img/s, "
                     f"epoch ETA {left:.0f} s")
                last_log = now
        dt = time.perf_counter() - t0
        ips = seen * _world() / dt if dt > 0 else 0.0
        val_acc, val_loss = (float("nan"), float("nan"))
        if val_loader is not None and _is_main():
            val_acc, val_loss = _evaluate(model, val_loader, device, autocast)
        if distributed:  # every rank takes the same early-stopping decision
            import torch.distributed as dist

            shared = torch.tensor([val_acc, val_loss], dtype=torch.float64, device=device)
            dist.broadcast(shared, src=0)
            val_acc, val_loss = float(shared[0]), float(shared[1])
        rec = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": val_loss, "val_acc": val_acc, "images_per_s": ips}
        history.append(rec)
        curves.append(f"{epoch},{step},{rec['train_loss']:.6f},{rec['train_acc']:.6f},{val_loss:.6f},"
                      f"{val_acc:.6f},{sched.get_last_lr()[0]:.6g},{ips:.1f}")
        es = t.early_stopping
        metric = val_acc if es.metric == "val_acc" else -val_loss
        if best is None or metric > best + es.min_delta:
            best, since_best = metric, 0
        else:
            since_best += 1
        if _is_main():
            eta = (time.perf_counter() - t_start) / (epoch - first_epoch + 1) * (t.epochs - epoch)
            info(f"train: epoch {epoch}/{t.epochs} loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f} "
                 f"val_acc {val_acc:.3f} | {ips:.0f} img/s, ETA {eta:.0f} s")
            ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "rng_torch": torch.get_rng_state(), "rng_loader": gen.get_state(),
                       **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                       "epoch": epoch, "step": step, "history": json.dumps(history), "curves": json.dumps(curves),
                       "best": best, "since_best": since_best}, epoch)
        if es.patience and since_best >= es.patience and val_loader is not None:
            if _is_main():
                info(f"train: early stop after epoch {epoch}: no {es.metric} gain for {es.patience} epochs")
            stopped_early = True
            break
    wall = time.perf_counter() - t_start
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if not _is_main():
        return {}
    gpu_s = wall * _world() if device.type == "cuda" else 0.0
    if meter is not None:
        meter.add(gpu_s=gpu_s)
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    save_model(MODEL, model, classes=classes, arch=m.arch, image_size=m.image_size, mean=m.mean, std=m.std)
    atomic_write_text(CURVES, "\n".join([CURVE_COLUMNS, *curves]) + "\n")
    last = history[-1]
    report = {"arch": m.arch, "device": device.type, "precision": precision, "processes": _world(),
              "start": start, "pretrained": pretrained, "finetune": t.finetune, "epochs": t.epochs, "epochs_run": len(history),
              "stopped_early": stopped_early, "classes": len(classes), "train_images": n_train,
              "final_train_loss": round(last["train_loss"], 6), "final_train_acc": round(last["train_acc"], 6),
              "final_val_acc": round(last["val_acc"], 6),
              "images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
              "train_wall_s": round(wall, 2), "gpu_s": round(gpu_s, 2), "parameters": sum(p.numel() for p in model.parameters()),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    atomic_write_json(REPORT, report)
    ckpt.done()
    return report


def run(cfg: Params, meter: CostMeter) -> dict:
    if cfg.train.distributed.nproc_per_node > 1:
        found = resolve_pretrained(cfg, meter)  # once, here: the workers then read the local cache
        _launch_torchrun(cfg)  # the workers' CPU time is counted: they are this process's children
        report = json.loads(REPORT.read_text())
        if found is not None:
            report["pretrained"] = found.lineage()
            atomic_write_json(REPORT, report)
        meter.add(gpu_s=report.get("gpu_s", 0.0))
        return report
    return train(cfg, meter)


def main() -> None:
    if "--ddp-worker" in sys.argv:
        from frugalml import config

        try:
            train(config.load(), None)
        except FrugalError as exc:
            print(f"train (rank {_rank()}): {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        return
    from tasks._stage import stage_main

    stage_main("train", run)


if __name__ == "__main__":
    main()

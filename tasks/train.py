"""Stage train: fine-tune a torchvision backbone on the prepared images.

Writes ``models/model.pt`` (weights + everything needed to serve them), ``metrics/train.json``
and the learning curves in ``plots/train.csv``. With ``train.seed`` fixed, CPU training is
bitwise deterministic.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from frugalml.config import Params
from frugalml.console import info
from frugalml.costs import CostMeter
from frugalml.errors import DataError
from frugalml.fsutil import atomic_write_json, atomic_write_text
from frugalml.modeling import (
    ManifestDataset, build_model, eval_transform, head_module, save_model, seed_everything, select_device,
    train_transform,
)
from tasks.ingest import PREPARED, read_manifest

MODEL = Path("models/model.pt")
REPORT = Path("metrics/train.json")
CURVES = Path("plots/train.csv")


def _loaders(cfg: Params, rows: list[dict], classes: list[str]):
    m, t = cfg.model, cfg.train
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not train_rows:
        raise DataError("the train split is empty: add images or change data.splits")
    gen = torch.Generator().manual_seed(t.seed)
    common = dict(num_workers=t.num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=t.num_workers > 0)
    train = torch.utils.data.DataLoader(
        ManifestDataset(train_rows, PREPARED, classes, train_transform(m.image_size, m.mean, m.std)),
        batch_size=t.batch_size, shuffle=True, generator=gen, drop_last=False, **common)
    val = torch.utils.data.DataLoader(
        ManifestDataset(val_rows, PREPARED, classes, eval_transform(m.image_size, m.mean, m.std)),
        batch_size=t.batch_size, shuffle=False, **common) if val_rows else None
    return train, val


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


def run(cfg: Params, meter: CostMeter) -> dict:
    m, t = cfg.model, cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    rows = read_manifest()
    if not rows:
        raise DataError("data/manifest.csv is missing or empty: run the ingest stage first")
    classes = sorted({r["label"] for r in rows})
    device = select_device(t.device)
    train_loader, val_loader = _loaders(cfg, rows, classes)

    model = build_model(m.arch, len(classes), m.pretrained)
    if t.finetune == "head":
        _, head = head_module(model)
        for p in model.parameters():
            p.requires_grad = False
        for p in head.parameters():
            p.requires_grad = True
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    steps = t.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    n_train = len(train_loader.dataset)
    info(f"train: {m.arch} on {device.type}, {len(classes)} classes, {n_train} train images, "
         f"{t.epochs} epochs, batch {t.batch_size}, pretrained={m.pretrained}")
    curves = ["epoch,step,train_loss,train_acc,val_loss,val_acc,lr,images_per_s"]
    t_start = time.perf_counter()
    history = []
    step = 0
    for epoch in range(1, t.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = model(x)
                loss = loss_fn(out.float(), y)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((out.argmax(1) == y).sum())
        dt = time.perf_counter() - t0
        ips = seen / dt if dt > 0 else 0.0
        val_acc, val_loss = _evaluate(model, val_loader, device, autocast) if val_loader else (float("nan"),) * 2
        rec = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": val_loss, "val_acc": val_acc, "images_per_s": ips}
        history.append(rec)
        curves.append(f"{epoch},{step},{rec['train_loss']:.6f},{rec['train_acc']:.6f},{val_loss:.6f},"
                      f"{val_acc:.6f},{sched.get_last_lr()[0]:.6g},{ips:.1f}")
        eta = (time.perf_counter() - t_start) / epoch * (t.epochs - epoch)
        info(f"train: epoch {epoch}/{t.epochs} loss {rec['train_loss']:.4f} acc {rec['train_acc']:.3f} "
             f"val_acc {val_acc:.3f} | {ips:.0f} img/s, ETA {eta:.0f} s")
    wall = time.perf_counter() - t_start
    if device.type == "cuda":
        meter.add(gpu_s=wall)
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    save_model(MODEL, model, classes=classes, arch=m.arch, image_size=m.image_size, mean=m.mean, std=m.std)
    atomic_write_text(CURVES, "\n".join(curves) + "\n")
    last = history[-1]
    report = {"arch": m.arch, "device": device.type, "epochs": t.epochs, "classes": len(classes),
              "train_images": n_train, "final_train_loss": round(last["train_loss"], 6),
              "final_train_acc": round(last["train_acc"], 6), "final_val_acc": round(last["val_acc"], 6),
              "images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
              "train_wall_s": round(wall, 2), "parameters": sum(p.numel() for p in model.parameters())}
    atomic_write_json(REPORT, report)
    return report


def main() -> None:
    from tasks._stage import stage_main

    stage_main("train", run)


if __name__ == "__main__":
    main()

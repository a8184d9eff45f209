"""Stage evaluate: score the trained model on the test split.

Writes ``metrics/eval.json`` (accuracy, macro-F1, per-class precision/recall/F1, latency
p50/p95 at batch 1, throughput at the evaluation batch size, model size and parameter count)
and the confusion matrix in ``plots/confusion.csv`` (one row per test image, for
``dvc plots show``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from frugalml.config import Params
from frugalml.console import info
from frugalml.costs import CostMeter
from frugalml.errors import DataError
from frugalml.fsutil import atomic_write_json, atomic_write_text
from frugalml.modeling import ManifestDataset, eval_transform, load_model, select_device
from tasks.ingest import PREPARED, read_manifest
from tasks.train import MODEL

REPORT = Path("metrics/eval.json")
CONFUSION = Path("plots/confusion.csv")


@torch.no_grad()
def predict(model, rows, meta, device, batch_size) -> tuple[list[int], list[int]]:
    ds = ManifestDataset(rows, PREPARED, meta["classes"], eval_transform(meta["image_size"], meta["mean"], meta["std"]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    y_true, y_pred = [], []
    for x, y in loader:
        y_pred += model(x.to(device)).argmax(1).cpu().tolist()
        y_true += y.tolist()
    return y_true, y_pred


@torch.no_grad()
def speed(model, meta, device, batch_size: int, samples: int) -> dict:
    x1 = torch.randn(1, 3, meta["image_size"], meta["image_size"], device=device)
    xb = torch.randn(batch_size, 3, meta["image_size"], meta["image_size"], device=device)
    for _ in range(3):
        model(x1)
        model(xb)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lat = []
    for _ in range(samples):
        t0 = time.perf_counter()
        model(x1)
        sync()
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    reps = max(3, samples // 10)
    for _ in range(reps):
        model(xb)
    sync()
    thr = reps * batch_size / (time.perf_counter() - t0)
    q = statistics.quantiles(lat, n=100)
    return {"latency_ms_p50": round(q[49], 3), "latency_ms_p95": round(q[94], 3),
            "throughput_images_per_s": round(thr, 1), "throughput_batch_size": batch_size}


def run(cfg: Params, meter: CostMeter) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rows = [r for r in read_manifest() if r["split"] == "test"]
    if not rows:
        raise DataError("the test split is empty: add images or raise data.splits.test")
    device = select_device(cfg.evaluate.device)
    model, meta = load_model(MODEL, device)
    classes = meta["classes"]
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise DataError(f"the test split has classes the model was not trained on: {unknown}")
    y_true, y_pred = predict(model, rows, meta, device, cfg.evaluate.batch_size)
    labels = list(range(len(classes)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {c: {"precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
                     "f1": round(float(f[i]), 6), "support": int(support[i])} for i, c in enumerate(classes)}
    report = {
        "test_images": len(rows),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 6),
        "per_class": per_class,
        "device": device.type,
        "model_size_bytes": MODEL.stat().st_size,
        "parameters": sum(t.numel() for t in model.parameters()),
        **speed(model, meta, device, cfg.evaluate.batch_size, cfg.evaluate.latency_samples),
    }
    atomic_write_json(REPORT, report)
    lines = ["actual,predicted"] + [f"{classes[a]},{classes[b]}" for a, b in zip(y_true, y_pred)]
    atomic_write_text(CONFUSION, "\n".join(lines) + "\n")
    info(f"evaluate: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on "
         f"{len(rows)} test images; p50 {report['latency_ms_p50']:.2f} ms at batch 1, "
         f"{report['throughput_images_per_s']:.0f} img/s at batch {cfg.evaluate.batch_size}")
    return report


def main() -> None:
    from tasks._stage import stage_main

    stage_main("evaluate", run)


if __name__ == "__main__":
    main()

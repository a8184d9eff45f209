"""Evaluation: score a trained model on the test split.

``evaluate(cfg)`` returns the ``EvalReport`` (accuracy, macro-F1, top-3, ECE, per-class
precision/recall/F1, latency p50/p95 at batch 1, throughput at the evaluation batch size, model
size and parameter count, and the production champion scored on the same images) with the
true and predicted class of every test image; ``tasks/evaluate.py`` writes them.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from frugalml.contracts import MODEL, PREPARED, ChampionScores, EvalReport, read_manifest
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.errors import DataError
from frugalml.core.fsutil import atomic_write_text
from frugalml.core.registry import Registry, fetch_model_blob, read_champion
from frugalml.core.store import Store
from frugalml.model.modeling import ManifestDataset, build_model, eval_transform, load_model, select_device

COMPARED = ("accuracy", "macro_f1", "top3_accuracy", "ece")  # the scores compared with the champion


@torch.no_grad()
def predict(model, rows, meta, device, batch_size) -> tuple[list[int], torch.Tensor]:
    """(true class indices, softmax probabilities [n, classes])."""
    ds = ManifestDataset(rows, PREPARED, meta["classes"], eval_transform(meta["image_size"], meta["mean"], meta["std"]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    y_true, probs = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu())
        y_true += y.tolist()
    return y_true, torch.cat(probs)


def expected_calibration_error(y_true: list[int], probs: torch.Tensor, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over confidence bins."""
    conf, pred = probs.max(1)
    correct = (pred == torch.tensor(y_true)).float()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(conf[inside].mean()) - float(correct[inside].mean()))
    return ece


def top_k_accuracy(y_true: list[int], probs: torch.Tensor, k: int) -> float:
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    return float((top == torch.tensor(y_true).unsqueeze(1)).any(1).float().mean())


def per_class_scores(y_true: list[int], y_pred: list[int], n: int) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 and support of each of ``n`` classes, from the confusion matrix; 0
    where undefined (scikit-learn's ``zero_division=0``, against which the tests check it). Not
    scikit-learn itself: importing it for a few array sums made every evaluate stage (every sweep
    trial) about 0.6 s slower and 100 MB bigger (5.0 -> 4.4 s, 867 -> 766 MB peak RSS)."""
    mat = np.zeros((n, n), dtype=np.int64)
    np.add.at(mat, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    tp, predicted, support = np.diag(mat).astype(float), mat.sum(0).astype(float), mat.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, tp / predicted, 0.0)
        r = np.where(support > 0, tp / support, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, f, support


def quality(y_true: list[int], probs: torch.Tensor, classes: list[str]) -> dict:
    y_pred = probs.argmax(1).tolist()
    p, r, f, support = per_class_scores(y_true, y_pred, len(classes))
    return {
        "accuracy": round(float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if y_true else 0.0, 6),
        "macro_f1": round(float(f.mean()), 6),
        "top3_accuracy": round(top_k_accuracy(y_true, probs, 3), 6),
        "ece": round(expected_calibration_error(y_true, probs), 6),
        "per_class": {
            c: {
                "precision": round(float(p[i]), 6),
                "recall": round(float(r[i]), 6),
                "f1": round(float(f[i]), 6),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
    }


def confusion_png(y_true: list[int], y_pred: list[int], classes: list[str], path: Path) -> None:
    """The confusion matrix as a PNG (matplotlib: counts, a colour scale, axis titles)."""
    from frugalml.core.charts import plot_confusion

    plot_confusion([(classes[a], classes[b]) for a, b in zip(y_true, y_pred)], classes, path)


def write_confusion_csv(path: Path, classes: list[str], y_true: list[int], y_pred: list[int]) -> None:
    """One row per test image. Class names come from folder names: commas and quotes are quoted."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["actual", "predicted"])
    w.writerows([classes[a], classes[b]] for a, b in zip(y_true, y_pred))
    atomic_write_text(path, buf.getvalue())


def champion(cfg: Params, rows: list[dict], classes: list[str], device, batch_size: int) -> ChampionScores | None:
    """Score the current ``production`` model on the same test images (None when there is none)."""
    store = Store.optional(cfg.storage)
    if store is None:
        return None
    known, champ_version = read_champion(cfg.model.name)  # the tracked input (see dvc.yaml)
    if not known:  # not written for this model yet: ask the registry
        pointer, _ = Registry(store, cfg.model.name).alias("production")
        champ_version = pointer["version"] if pointer else None
    if champ_version is None:
        return None
    version, blob = fetch_model_blob(store, cfg.model.name, champ_version)
    if list(blob["classes"]) != list(classes):
        info(f"evaluate: champion {version} has other classes; not compared")
        return ChampionScores(version=version, comparable=False)
    model = build_model(blob["arch"], len(classes))
    model.load_state_dict(blob["state_dict"])
    model.eval().to(device)
    meta = {"classes": classes, "image_size": blob["image_size"], "mean": blob["mean"], "std": blob["std"]}
    y_true, probs = predict(model, rows, meta, device, batch_size)
    q = quality(y_true, probs, classes)
    return ChampionScores(
        version=version,
        comparable=True,
        **{k: q[k] for k in COMPARED},
        per_class_recall={c: v["recall"] for c, v in q["per_class"].items()},
    )


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
    return {
        "latency_ms_p50": round(q[49], 3),
        "latency_ms_p95": round(q[94], 3),
        "throughput_images_per_s": round(thr, 1),
        "throughput_batch_size": batch_size,
    }


def evaluate(cfg: Params) -> tuple[EvalReport, list[int], list[int], list[str]]:
    """The report, and the true and predicted class index of every test image with the class names."""
    rows = [r for r in read_manifest() if r["split"] == "test"]
    if not rows:
        raise DataError("the test split is empty: add images or raise data.splits.test")
    device = select_device(cfg.evaluate.device)
    model, meta = load_model(MODEL, device)
    classes = meta["classes"]
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise DataError(f"the test split has classes the model was not trained on: {unknown}")
    y_true, probs = predict(model, rows, meta, device, cfg.evaluate.batch_size)
    report = EvalReport.model_validate(
        {
            "test_images": len(rows),
            **quality(y_true, probs, classes),
            "device": device.type,
            "model_size_bytes": MODEL.stat().st_size,
            "parameters": sum(t.numel() for t in model.parameters()),
            **speed(model, meta, device, cfg.evaluate.batch_size, cfg.evaluate.latency_samples),
        }
    )
    report.champion = champ = champion(cfg, rows, classes, device, cfg.evaluate.batch_size)
    if champ is not None and champ.comparable:
        report.delta_vs_champion = {k: round(getattr(report, k) - getattr(champ, k), 6) for k in COMPARED}
    return report, y_true, probs.argmax(1).tolist(), classes


def log_summary(report: EvalReport) -> None:
    info(
        f"evaluate: accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f}, "
        f"ECE {report.ece:.4f} on {report.test_images} test images; p50 {report.latency_ms_p50:.2f} ms at batch 1, "
        f"{report.throughput_images_per_s:.0f} img/s at batch {report.throughput_batch_size}"
    )
    champ = report.champion
    if champ is not None and champ.comparable:
        info(
            f"evaluate: champion {champ.version}: accuracy {champ.accuracy:.4f} "
            f"(delta {report.delta_vs_champion['accuracy']:+.4f})"
        )

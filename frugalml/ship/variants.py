"""Cheaper to serve: the trained model as ONNX (fp32) and int8 variants, each scored on the test split.

Serving runs for months, so its cost per 1k predictions is the bill that compounds. ``build``
makes the variants named in ``compress.variants`` next to the trained model (``fp32``: the
PyTorch model itself):

* ``onnx``: the model exported with ``torch.onnx.export`` (dynamo exporter, a dynamic batch
  axis, weights inside the file), run by ONNX Runtime;
* ``int8``: that ONNX model statically quantized by ONNX Runtime (QDQ format, per-channel int8
  weights, uint8 activations), calibrated on ``compress.calibration_images`` images of the
  validation split.

A variant that cannot be built (an operator the exporter or the quantizer does not support) is
reported as skipped with the reason; the others go on. ``score`` measures every built variant on
the same test images as the evaluation: accuracy, macro-F1, worst class recall, the accuracy
delta vs fp32, latency p50/p95 at batch 1, throughput at batch 16, file size and USD per 1k
predictions at ``costs.prices.serving_usd_per_hour``. ``choose`` picks the variant to serve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from frugalml.contracts import MODEL, PREPARED, VARIANTS_CSV, VARIANTS_DIR, VariantScore, VariantsReport, read_manifest
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.errors import DataError
from frugalml.core.fsutil import atomic_write_text
from frugalml.model.modeling import ManifestDataset, eval_transform, load_model
from frugalml.ship.evaluation import predict, quality
from frugalml.ship.evaluation import speed as evaluation_speed
from frugalml.ship.gates import serving_usd_per_1k

FILES = {"onnx": VARIANTS_DIR / "model.onnx", "int8": VARIANTS_DIR / "model.int8.onnx"}
RUNTIMES = {"fp32": "torch", "onnx": "onnxruntime", "int8": "onnxruntime"}
THROUGHPUT_BATCH = 16


def _loader(rows: list[dict], meta: dict, batch_size: int):
    ds = ManifestDataset(rows, PREPARED, meta["classes"], eval_transform(meta["image_size"], meta["mean"], meta["std"]))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


# -- building -------------------------------------------------------------------------------------
def export_onnx(model: torch.nn.Module, meta: dict, path: Path) -> None:
    """The model as one ONNX file (weights inside), batch axis dynamic; written atomically."""
    size = meta["image_size"]
    tmp = path.with_name(path.name + ".tmp")
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (torch.randn(2, 3, size, size),),
        str(tmp),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        optimize=True,
        verbose=False,
    )
    tmp.replace(path)


def quantize_int8(fp32: Path, path: Path, calibration: list[np.ndarray]) -> None:
    """Static int8 (QDQ, per-channel weights) calibrated on ``calibration`` batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    pre = path.with_name(path.name + ".pre.onnx")
    tmp = path.with_name(path.name + ".tmp")
    try:
        quant_pre_process(str(fp32), str(pre))
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        tmp.replace(path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def calibration_batches(cfg: Params, meta: dict) -> list[np.ndarray]:
    rows = [r for r in read_manifest() if r["split"] == "val"][: cfg.compress.calibration_images]
    if not rows:
        raise DataError("int8 calibration needs images in the val split: raise data.splits.val")
    return [x.numpy() for x, _ in _loader(rows, meta, THROUGHPUT_BATCH)]


def build(cfg: Params, model: torch.nn.Module, meta: dict) -> dict[str, str]:
    """Build the configured variants; returns name -> why it was skipped (built ones absent)."""
    VARIANTS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in VARIANTS_DIR.iterdir():  # a variant no longer configured must not ship by mistake
        stale.unlink()
    skipped: dict[str, str] = {}
    wanted = cfg.compress.variants
    if "onnx" in wanted or "int8" in wanted:
        try:
            export_onnx(model, meta, FILES["onnx"])
        except Exception as exc:  # noqa: BLE001 - any exporter failure skips the ONNX variants, not the stage
            reason = f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return {name: reason for name in wanted if name != "fp32"}
    if "int8" in wanted:
        try:
            quantize_int8(FILES["onnx"], FILES["int8"], calibration_batches(cfg, meta))
        except DataError as exc:
            skipped["int8"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - an operator the quantizer cannot handle skips int8 only
            skipped["int8"] = f"quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if "onnx" not in wanted:
        FILES["onnx"].unlink(missing_ok=True)  # only the int8 variant was asked for
    return skipped


# -- scoring --------------------------------------------------------------------------------------
class _Session:
    """An ONNX Runtime session that takes and returns torch tensors, like the model."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": x.numpy()})[0])


def score(cfg: Params, name: str, run, meta: dict, rows: list[dict], size_bytes: int) -> VariantScore:
    """``run`` (the PyTorch model, or an ONNX Runtime session) measured as ``evaluate`` measures."""
    cpu = torch.device("cpu")
    y_true, probs = predict(run, rows, meta, cpu, THROUGHPUT_BATCH)
    q = quality(y_true, probs, meta["classes"])
    speed = evaluation_speed(run, meta, cpu, THROUGHPUT_BATCH, cfg.evaluate.latency_samples)
    speed.pop("throughput_batch_size")
    return VariantScore(
        name=name,
        runtime=RUNTIMES[name],
        file=str(MODEL if name == "fp32" else FILES[name]),
        status="built",
        size_bytes=size_bytes,
        accuracy=q["accuracy"],
        macro_f1=q["macro_f1"],
        worst_class_recall=min(v["recall"] for v in q["per_class"].values()),
        **speed,
        usd_per_1k=serving_usd_per_1k(speed["latency_ms_p50"], cfg),
    )


def measure(cfg: Params) -> list[VariantScore]:
    """Build and score every configured variant (fp32 first: the others' deltas are against it)."""
    rows = [r for r in read_manifest() if r["split"] == "test"]
    if not rows:
        raise DataError("the test split is empty: add images or raise data.splits.test")
    torch.set_num_threads(torch.get_num_threads())
    model, meta = load_model(MODEL, "cpu")
    skipped = build(cfg, model, meta)
    scores = [score(cfg, "fp32", model, meta, rows, MODEL.stat().st_size)]
    for name in cfg.compress.variants:
        if name == "fp32":
            continue
        if name in skipped:
            scores.append(VariantScore(name=name, runtime=RUNTIMES[name], status="skipped", reason=skipped[name]))
            info(f"compress: {name} skipped: {skipped[name]}")
            continue
        scores.append(score(cfg, name, _Session(FILES[name]), meta, rows, FILES[name].stat().st_size))
    for s in scores:
        if s.status == "built":
            s.accuracy_delta = round(s.accuracy - scores[0].accuracy, 6)
    return scores


def choose(cfg: Params, scores: list[VariantScore]) -> tuple[str, str]:
    """The variant to serve and why: ``serving.variant``, or with ``auto`` the cheapest per 1k
    predictions among those within ``gates.max_variant_accuracy_drop`` of fp32 (fp32 itself
    always qualifies). A variant asked for by name must be built and within the drop too."""
    drop = cfg.gates.max_variant_accuracy_drop
    ok = [s for s in scores if s.status == "built" and (drop is None or -(s.accuracy_delta or 0.0) <= drop + 1e-12)]
    want = cfg.serving.variant
    if want != "auto":
        found = next((s for s in scores if s.name == want), None)
        if found is None or found.status != "built":
            return (
                "fp32",
                f"serving.variant {want} is not built ({found.reason if found else 'not in compress.variants'})",
            )
        if found not in ok:
            return "fp32", f"serving.variant {want} loses {-found.accuracy_delta:.4f} accuracy (> {drop})"
        return want, "serving.variant"
    best = min(ok, key=lambda s: (s.usd_per_1k, s.size_bytes))
    return best.name, f"cheapest per 1k predictions within {drop} accuracy of fp32"


def write_plot(report: VariantsReport) -> None:
    """``plots/variants.csv``: one row per built variant, for ``dvc plots show`` (x: USD per 1k, y: accuracy)."""
    cols = ("variant", "usd_per_1k", "accuracy", "size_mb", "latency_ms_p50", "chosen")
    rows = [
        f"{v.name},{v.usd_per_1k:.8f},{v.accuracy:.6f},{v.size_bytes / 1e6:.3f},{v.latency_ms_p50:.3f},"
        f"{int(v.name == report.chosen)}"
        for v in report.variants
        if v.status == "built"
    ]
    atomic_write_text(VARIANTS_CSV, "\n".join([",".join(cols), *rows]) + "\n")

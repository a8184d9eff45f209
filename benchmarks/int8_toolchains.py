"""Which int8 toolchain for CPU serving: PyTorch PT2E (torchao, x86 inductor) or ONNX Runtime QDQ.

    .venv/bin/pip install torchao   # PT2E moved out of torch.ao into torchao; not a dependency
    .venv/bin/python benchmarks/int8_toolchains.py [--archs resnet18,mobilenet_v3_small] [--size 224]

For each architecture at --size px, side by side in one process (2 threads): images/s at batch 16
and p50 ms at batch 1 of

  * torch fp32 (eager): what the pipeline serves without variants;
  * PT2E int8: ``X86InductorQuantizer`` (static, per-channel), calibrated on --calibration
    random images, run through ``torch.compile`` (inductor: what makes PT2E int8 fast on x86);
  * ONNX Runtime fp32 and ONNX Runtime int8 QDQ: ``frugalml.ship.variants.export_onnx`` and
    ``quantize_int8``, the functions the compress stage runs, calibrated on the same images;

and the time each toolchain needs to build its int8 model (PT2E: quantize + compile warm-up).
The weights are random: speed does not depend on them, accuracy does, so the accuracy of the
chosen toolchain is measured on a trained model by ``benchmarks/serve.py --variants``.
Median of --rounds timing rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR  # noqa: E402


def timed(fn, x1: torch.Tensor, x16: torch.Tensor, rounds: int) -> dict:
    for _ in range(3):
        fn(x1)
        fn(x16)
    lat, thr = [], []
    for _ in range(rounds):
        t = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn(x1)
            t.append((time.perf_counter() - t0) * 1000)
        lat.append(statistics.median(t))
        t0, n = time.perf_counter(), 0
        while n < 160:
            fn(x16)
            n += 16
        thr.append(n / (time.perf_counter() - t0))
    return {"batch1_p50_ms": round(statistics.median(lat), 2), "batch16_images_per_s": round(statistics.median(thr), 1)}


def pt2e_int8(model: torch.nn.Module, calib: list[torch.Tensor], x16: torch.Tensor):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(model, (x16,), dynamic_shapes={"x": {0: batch}}).module()
    prepared = prepare_pt2e(exported, quantizer)
    for c in calib:
        prepared(c)
    converted = convert_pt2e(prepared)
    return torch.compile(converted)


def ort(path: Path):
    import onnxruntime as ort_

    opts = ort_.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort_.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"image": x.numpy()})[0]


def measure(arch: str, args, work: Path) -> dict:
    from frugalml.model.modeling import build_model
    from frugalml.ship.variants import export_onnx, quantize_int8

    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    x1, x16 = torch.randn(1, 3, args.size, args.size), torch.randn(16, 3, args.size, args.size)
    calib = [torch.randn(16, 3, args.size, args.size) for _ in range(args.calibration // 16)]
    row: dict = {"arch": arch}
    with torch.inference_mode():
        row["torch_fp32"] = timed(model, x1, x16, args.rounds)
    onnx, int8 = work / f"{arch}.onnx", work / f"{arch}.int8.onnx"
    export_onnx(model, {"image_size": args.size}, onnx)
    t0 = time.perf_counter()
    quantize_int8(onnx, int8, [c.numpy() for c in calib])
    row["ort_int8_build_s"] = round(time.perf_counter() - t0, 1)
    row["ort_fp32"] = timed(ort(onnx), x1, x16, args.rounds)
    row["ort_int8"] = timed(ort(int8), x1, x16, args.rounds)
    row["ort_int8_size_vs_fp32"] = round(int8.stat().st_size / onnx.stat().st_size, 3)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            q = pt2e_int8(model, calib, x16)
            q(x16), q(x1)  # inductor compiles on the first calls of each shape
            row["pt2e_int8_build_s"] = round(time.perf_counter() - t0, 1)
            row["pt2e_int8"] = timed(q, x1, x16, args.rounds)
    except Exception as exc:  # noqa: BLE001 - a toolchain that cannot build is a result, reported
        row["pt2e_int8"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,mobilenet_v3_small")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    np.random.seed(0)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        rows = [measure(a, args, Path(tmp)) for a in args.archs.split(",")]
    print(json.dumps(rows, indent=2))
    print(f"{'arch':20s} {'toolchain':10s} {'img/s b16':>10s} {'x torch':>8s} {'p50 b1 ms':>10s}")
    for r in rows:
        base = r["torch_fp32"]["batch16_images_per_s"]
        for k in ("torch_fp32", "ort_fp32", "ort_int8", "pt2e_int8"):
            v = r.get(k)
            if isinstance(v, dict):
                ratio = v["batch16_images_per_s"] / base
                print(
                    f"{r['arch']:20s} {k:10s} {v['batch16_images_per_s']:10.1f} {ratio:8.2f} {v['batch1_p50_ms']:10.2f}"
                )
            else:
                print(f"{r['arch']:20s} {k:10s} {v}")


if __name__ == "__main__":
    main()

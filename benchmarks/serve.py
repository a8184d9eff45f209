"""Serving throughput and latency next to raw in-process torch inference, in one run.

    .venv/bin/python benchmarks/serve.py [--requests 400] [--image-size 32]

Builds a model with the real pipeline (builtin digits, resnet18 at --image-size px, 1 epoch;
at 96 px and more only the head is trained, to keep the build short)
against its own embedded S3 server, promotes it, starts `frugalml serve`, then measures:
  * service: /classify with PNG uploads from client threads (HTTP keep-alive), at
    concurrency 1 and 16, and /classify_batch (one image per request, adaptive batching) at
    concurrency 16: requests/s, p50 and p99 latency;
  * raw: the same model and images in this process (decode + transform + forward):
    batch-1 latency p50/p99 and batched (16) images/s.
Targets: at concurrency 16, service req/s >= 0.6 x raw batched images/s; at concurrency 1,
p50 overhead (service p50 - raw p50) under 10 ms.

``--variants`` (the compress stage's variants, at --image-size 224 by default): for EfficientNet-
Lite0 from its ImageNet weights (``--archs``, ``--pretrained``) on builtin:shapes (``--finetune``
head by default, on the cached features; ``--epochs``), the compress stage builds and scores fp32,
ONNX and int8; each variant is then packaged, promoted and served
in turn (``metrics/variants.json`` rewritten with it as the chosen one, as ``serving.variant:
<name>`` would): req/s at concurrency 16, p50 at concurrency 1, size and accuracy delta vs fp32
on the test split. Targets: int8 >= 2x fp32 req/s, <= 1 pp accuracy drop, size <= 0.3x.

``--memory``: instead, 32 clients at once each send one 6000x6000 PNG (36 M pixels, a few
hundred kB) to /classify_batch, plus one text upload in the same burst; prints the serving
worker's peak RSS (VmHWM) before and after, the statuses, and the stated bound.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR  # noqa: E402
from frugalml.ship.serving.runner import free_port  # noqa: E402


def sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{cmd} failed:\n{res.stderr[-3000:]}")
    return res


def multipart(data: bytes, field: str = "image") -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def load(port: int, bodies: list[tuple[bytes, str]], concurrency: int, total: int, path: str = "/classify") -> dict:
    lat: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))

    def worker():
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in counter:
            body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                payload = r.read()
                ok = r.status == 200
                kind = "" if ok else f"HTTP {r.status}: {payload[:120]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                kind = f"{exc.__class__.__name__}: {exc}"
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(dt)
                errors += not ok
                if not ok:
                    kinds[kind] = kinds.get(kind, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(q[49], 2),
        "p99_ms": round(q[98], 2),
        "errors": errors,
        **({"error_kinds": kinds} if kinds else {}),
    }


def raw(model_path: Path, images: list[bytes], batch: int, reps: int) -> dict:
    import torch
    from PIL import Image

    from frugalml.model.modeling import eval_transform, load_model

    model, meta = load_model(model_path)
    tf = eval_transform(meta["image_size"], meta["mean"], meta["std"])

    def prep(data):
        with Image.open(io.BytesIO(data)) as im:
            return tf(im.convert("RGB"))

    lat = []
    with torch.inference_mode():
        for _ in range(3):
            model(prep(images[0]).unsqueeze(0))
        for i in range(reps):
            t0 = time.perf_counter()
            torch.softmax(model(prep(images[i % len(images)]).unsqueeze(0)), 1)
            lat.append((time.perf_counter() - t0) * 1000)
        n, t0 = 0, time.perf_counter()
        while n < reps * 4:
            x = torch.stack([prep(images[(n + j) % len(images)]) for j in range(batch)])
            torch.softmax(model(x), 1)
            n += batch
        thr = n / (time.perf_counter() - t0)
    q = statistics.quantiles(lat, n=100)
    return {
        "batch1_p50_ms": round(q[49], 2),
        "batch1_p99_ms": round(q[98], 2),
        f"batch{batch}_images_per_s": round(thr, 1),
    }


def _hwm_mb(pid: int) -> dict[int, float]:
    """VmHWM (peak RSS) in MB of every process below ``pid``."""
    import psutil

    out = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            out[p.pid] = round(kb / 1024, 1)
        except (OSError, StopIteration):
            pass
    return out


def memory_burst(serve_pid: int, port: int, clients: int = 32, side: int = 6000) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buf, format="PNG")
    huge = multipart(buf.getvalue(), "images")
    text = multipart(b"not an image", "images")
    before = _hwm_mb(serve_pid)
    statuses: list[int] = []
    barrier = threading.Barrier(clients + 1)

    def one(body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        conn.request("POST", "/classify_batch", body=body[0], headers={"Content-Type": body[1]})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)

    threads = [threading.Thread(target=one, args=(huge if i else text,)) for i in range(clients + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _hwm_mb(serve_pid)
    return {
        "uploads": clients,
        "pixels_each": side * side,
        "png_bytes_each": len(buf.getvalue()),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "peak_rss_mb_before": max(before.values()),
        "peak_rss_mb_after": max(after.values()),
        "decoded_all_at_once_would_need_mb": round(clients * side * side * 3 / 1e6),
        "stated_bound_extra_mb": round(side * side * 8 / 1e6),
    }


@contextmanager
def serving(work: Path, env: dict):
    """`frugalml serve` of the production model, ready; stopped (its process group) on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "frugalml.cli", "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(240):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield port, proc
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def package_and_promote(work: Path, env: dict) -> None:
    for stage in ("gate", "package"):
        sh([sys.executable, "-m", f"tasks.{stage}"], work, env)
    version = json.loads((work / "metrics/package.json").read_text())["version"]
    sh([sys.executable, "-m", "frugalml.cli", "promote", version, "--to", "production"], work, env)


def clean_env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def auto_choice(report) -> tuple[str, str]:
    """What ``serving.variant: auto`` ships from these scores under the default
    ``gates.max_variant_accuracy_drop`` (the benchmark's own params lift the limit so that every
    variant is built and served)."""
    from frugalml.core.config import Params
    from frugalml.ship.variants import choose

    return choose(Params(), report.variants)


def variant_rows(arch: str, args, root: Path) -> list[dict]:
    """One row per variant of ``arch`` at ``--image-size`` on builtin:shapes: the compress stage's
    accuracy delta and size, then each variant served in turn: req/s at concurrency 16, p50 at 1."""
    from frugalml.contracts import VariantsReport
    from frugalml.core.embedded import EmbeddedS3

    slug = arch.replace("/", "-").replace("_", "-")
    work = root / slug
    work.mkdir()
    name = f"bench-{slug}"
    # head only: the backbone is frozen and augmentation off, so its features are computed once
    # (train.feature_cache): at 224 px, full fine-tuning of an epoch takes ~15 min on 2 cores
    head = "  augment: {rotation_deg: 0, translate: 0, scale_min: 1, scale_max: 1}\n" if args.finetune == "head" else ""

    def params(size: int, epochs: int, start: str = args.pretrained, variants: str = "[fp32, onnx, int8]") -> None:
        (work / "params.yaml").write_text(
            "data:\n  source: builtin:shapes\n"
            f"model:\n  arch: {arch}\n  image_size: {size}\n  name: {name}\n  pretrained: {start}\n"
            f"train:\n  epochs: {epochs}\n  checkpoint_to_s3: false\n  finetune: {args.finetune}\n{head}"
            f"  warm_start:\n    epochs: {epochs}\n    lr_mult: 0.25\n"
            "evaluate:\n  latency_samples: 20\ngates:\n  min_accuracy: 0.0\n  max_variant_accuracy_drop: null\n"
            "  max_regression: null\n"
            f"compress:\n  calibration_images: {args.calibration}\n  variants: {variants}\n"
        )

    env = clean_env()

    def run_stages(names: list[str]) -> None:
        for stage in names:
            sh([sys.executable, "-m", f"tasks.{stage}"], work, env)

    server = EmbeddedS3(work)
    server.up()
    try:
        t0 = time.perf_counter()
        stages = ["ingest", "validate", "train", "evaluate", "compress"]
        if args.warm_epochs:
            # progressive resizing: most epochs at the images' own 64 px (about 12x cheaper per
            # epoch than 224 px), then fine-tune that model at --image-size through the registry
            params(args.warm_size, args.warm_epochs, variants="[fp32]")
            run_stages(stages)
            warm = json.loads((work / "metrics/eval.json").read_text())["accuracy"]
            print(
                f"{arch}: {args.warm_epochs} epochs at {args.warm_size} px: test accuracy {warm:.3f}", file=sys.stderr
            )
            package_and_promote(work, env)
            stages = ["train", "evaluate", "compress"]
        params(args.image_size, args.epochs, f"registry:{name}@production" if args.warm_epochs else args.pretrained)
        run_stages(stages)
        built = time.perf_counter() - t0
        report = VariantsReport.read(work / VariantsReport.PATH)
        images = [p.read_bytes() for p in sorted((work / ".frugalml/builtin/shapes").rglob("*.png"))[:64]]
        bodies = [multipart(d) for d in images]
        fp32 = next(v for v in report.variants if v.name == "fp32")
        auto = auto_choice(report)
        print(f"{arch}: serving.variant auto ships {auto[0]} under the default gate ({auto[1]})", file=sys.stderr)
        rows = []
        for v in report.variants:
            if v.status != "built":
                rows.append({"arch": arch, "variant": v.name, "skipped": v.reason})
                continue
            # what the compress stage writes with serving.variant: <v> (and no drop limit)
            report.model_copy(update={"chosen": v.name, "why": "serving.variant"}).write(work / VariantsReport.PATH)
            package_and_promote(work, env)
            with serving(work, env) as (port, _):
                load(port, bodies, 4, 40)  # warm-up
                c16 = load(port, bodies, 16, args.requests)
                c1 = load(port, bodies, 1, args.requests // 2)
            rows.append(
                {
                    "arch": arch,
                    "variant": v.name,
                    "runtime": v.runtime,
                    "req_per_s_c16": c16["requests_per_s"],
                    "p50_ms_c1": c1["p50_ms"],
                    "errors": c16["errors"] + c1["errors"],
                    "size_mb": round(v.size_bytes / 1e6, 2),
                    "size_vs_fp32": round(v.size_bytes / fp32.size_bytes, 3),
                    "accuracy": v.accuracy,
                    "accuracy_delta_pp": round(100 * v.accuracy_delta, 2),
                    "auto_ships": v.name == auto[0],
                }
            )
        for r in rows:
            if "req_per_s_c16" in r:
                base = next(x for x in rows if x["variant"] == "fp32")
                r["throughput_vs_fp32"] = round(r["req_per_s_c16"] / base["req_per_s_c16"], 2)
        print(f"{arch}: trained and compressed in {built:.0f} s", file=sys.stderr)
        return rows
    finally:
        server.down()
        shutil.rmtree(work / ".frugalml" / "bentoml", ignore_errors=True)


def variants_main(args) -> None:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        rows = [r for arch in args.archs.split(",") for r in variant_rows(arch, args, Path(tmp))]
    print(
        json.dumps(
            {
                "image_size": args.image_size,
                "epochs": args.epochs,
                "pretrained": args.pretrained,
                "finetune": args.finetune,
                "warm": f"{args.warm_epochs} epochs at {args.warm_size} px" if args.warm_epochs else None,
                "cores": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
    )
    head = ("req/s c16", "x fp32", "p50 c1", "MB", "x size", "accuracy", "acc pp")
    print(f"{'arch':20s} {'variant':8s} " + " ".join(f"{h:>9s}" for h in head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['arch']:20s} {r['variant']:8s} skipped: {r['skipped']}")
            continue
        print(
            f"{r['arch']:20s} {r['variant']:8s} {r['req_per_s_c16']:9.1f} {r['throughput_vs_fp32']:9.2f} "
            f"{r['p50_ms_c1']:9.2f} {r['size_mb']:9.2f} {r['size_vs_fp32']:9.3f} {r['accuracy']:9.4f} "
            f"{r['accuracy_delta_pp']:+9.2f}" + ("  <- auto ships" if r["auto_ships"] else "")
        )
    print("targets: int8 >= 2x fp32 req/s at c16, <= 1 pp accuracy drop, size <= 0.3x fp32")


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    from frugalml.core.embedded import EmbeddedS3

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--memory", action="store_true", help="measure worker memory under huge-pixel uploads")
    ap.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="32 (the demo: per-request HTTP work dominates) or e.g. 224 (compute dominates); --variants: 224",
    )
    ap.add_argument("--variants", action="store_true", help="one row per serving variant (fp32, onnx, int8)")
    ap.add_argument("--archs", default="timm/tf_efficientnet_lite0", help="--variants: the architectures")
    ap.add_argument("--pretrained", default="imagenet", help="--variants: model.pretrained (none: from scratch)")
    ap.add_argument("--finetune", default="head", help="--variants: train.finetune (head: on cached features)")
    ap.add_argument("--epochs", type=int, default=6, help="--variants: training epochs")
    ap.add_argument("--calibration", type=int, default=256, help="--variants: int8 calibration images")
    ap.add_argument(
        "--warm-epochs",
        type=int,
        default=0,
        help="--variants: first train this many epochs at --warm-size px, then --epochs at --image-size from it",
    )
    ap.add_argument("--warm-size", type=int, default=64, help="--variants: image size of the --warm-epochs")
    args = ap.parse_args()
    if args.variants:
        args.image_size = args.image_size or 224
        return variants_main(args)
    args.image_size = args.image_size or 32
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(
            "data:\n  source: builtin:digits\n"
            f"model:\n  arch: resnet18\n  image_size: {args.image_size}\n  name: bench-serve\n"
            f"train:\n  epochs: 1\n  checkpoint_to_s3: false\n"
            f"  finetune: {'head' if args.image_size >= 96 else 'full'}\n"
            "evaluate:\n  latency_samples: 10\ngates:\n  min_accuracy: 0.0\n"
        )
        env = clean_env()
        server = EmbeddedS3(work)
        server.up()
        try:
            for stage in ("ingest", "validate", "train", "evaluate", "compress"):
                sh([sys.executable, "-m", f"tasks.{stage}"], work, env)
            package_and_promote(work, env)
            with serving(work, env) as (port, proc):
                if args.memory:
                    return print(json.dumps(memory_burst(proc.pid, port), indent=2))
                images = [p.read_bytes() for p in sorted((work / ".frugalml/builtin/digits").rglob("*.png"))[:64]]
                bodies = [multipart(d) for d in images]
                load(port, bodies, 4, 50)  # warm-up
                c1 = load(port, bodies, 1, args.requests)
                c16 = load(port, bodies, 16, args.requests * 2)
                # one image per request to the batchable endpoint: adaptive batching groups them
                batch_bodies = [multipart(d, "images") for d in images]
                c16_batch = load(port, batch_bodies, 16, args.requests * 2, "/classify_batch")
            r = raw(work / "models/model.pt", images, 16, args.requests)
            variant = json.loads((work / "metrics/variants.json").read_text())["chosen"]
            print(
                json.dumps(
                    {
                        "model": f"resnet18 {args.image_size}px, served variant {variant}",
                        "cores": os.cpu_count(),
                        "service_c1": c1,
                        "service_c16": c16,
                        "service_c16_classify_batch": c16_batch,
                        "raw_in_process_torch_fp32": r,
                        "c1_p50_overhead_ms": round(c1["p50_ms"] - r["batch1_p50_ms"], 2),
                        "target_c1_overhead_ms": 10,
                        "c16_ratio_to_raw_batched": round(c16["requests_per_s"] / r["batch16_images_per_s"], 3),
                        "c16_classify_batch_ratio_to_raw_batched": round(
                            c16_batch["requests_per_s"] / r["batch16_images_per_s"], 3
                        ),
                        "target_c16_ratio": 0.6,
                    },
                    indent=2,
                )
            )
        finally:
            server.down()
            shutil.rmtree(work / ".frugalml" / "bentoml", ignore_errors=True)


if __name__ == "__main__":
    main()

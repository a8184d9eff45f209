"""Ingest throughput and memory, measured side by side in one run.

    .venv/bin/python benchmarks/ingest.py [--images 20000] [--big 40000]

Generates N small PNG images in <class>/ folders, then times, over the same files:
  * bare:   a loop of PIL decode + sha256 (the floor any ingest must pay), one process;
  * ingest: the ingest stage (decode, EXIF, RGB, pack into shards, manifest, report), with
    its default workers (one process per core).
Prints ingest throughput as a ratio to the bare loop (target >= 0.7) and the stage's peak RSS
(largest of the stage process and its workers)
at N and at the --big size, with a linear extrapolation to 100k images (target < 1 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
from _common import BENCH_DIR  # noqa: E402


def generate(dest: Path, n: int, classes: int = 10, size: int = 48) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (classes, size, size, 3), dtype=np.uint8)
    for i in range(n):
        c = i % classes
        arr = np.clip(base[c].astype(np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        d = dest / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / f"img_{i:06d}.png", compress_level=1)


def bare_loop(src: Path) -> float:
    t0 = time.perf_counter()
    files = sorted(src.rglob("*.png"))  # finding the files is part of any loop over them
    for f in files:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    return len(files) / (time.perf_counter() - t0)


def run_ingest(src: Path, work: Path) -> tuple[float, float, dict, float]:
    """Run the real stage in a fresh process: (images/s of the stage, peak RSS MB, counts, process wall s).

    Throughput is timed around the stage's run(), as the bare loop is; the process start
    (interpreter, imports) is reported apart, since it does not grow with the dataset.
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(f"data:\n  source: {src}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    code = (
        "import resource, sys, time; from tasks import ingest; from frugalml import config; "
        "from frugalml.core.costs import CostMeter\n"
        "cfg = config.load()\n"
        "t0 = time.perf_counter()\n"
        "with CostMeter('ingest', 'bench') as m: ingest.run(cfg, m)\n"
        "dt = time.perf_counter() - t0\n"
        "rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(dt, rss)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    wall = time.perf_counter() - t0
    counts = json.loads((work / "metrics/ingest.json").read_text())["counts"]
    stage_s, rss_kb = out.stdout.strip().splitlines()[-1].split()
    return counts["images"] / float(stage_s), int(rss_kb) / 1024, counts, wall - float(stage_s)


def archive_run(n: int) -> None:
    """The same N images as a folder and as a .tar.gz (nested class folders): every member
    must be ingested once, with the folder's count; prints both times."""
    import tarfile

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        tmp = Path(tmp)
        generate(tmp / "src" / "dataset", n)
        arc = tmp / "src.tar.gz"
        with tarfile.open(arc, "w:gz") as tf:
            for d in sorted((tmp / "src" / "dataset").iterdir()):
                tf.add(d, d.name)  # <class>/<image>
        out = {"images": n, "archive_bytes": arc.stat().st_size, "cores": os.cpu_count()}
        for name, source in (("folder", tmp / "src" / "dataset"), ("tar_gz", arc)):
            ips, rss, counts, start = run_ingest(source, tmp / f"w-{name}")
            out[name] = {
                "images": counts["images"],
                "classes": counts["classes"],
                "rejected": counts["rejected"],
                "images_per_s": round(ips, 1),
                "seconds": round(counts["images"] / ips, 2),
                "peak_rss_mb": round(rss, 1),
            }
        out["archive_to_folder_speed"] = round(out["tar_gz"]["images_per_s"] / out["folder"]["images_per_s"], 3)
        print(json.dumps(out, indent=2))


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--big", type=int, default=40000)
    ap.add_argument(
        "--archive",
        type=int,
        default=0,
        metavar="N",
        help="instead: N images as a folder and as a .tar.gz, ingested side by side",
    )
    args = ap.parse_args()
    if args.archive:
        return archive_run(args.archive)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        tmp = Path(tmp)
        print(f"generating {args.big} images ...", flush=True)
        generate(tmp / "big", args.big)
        small = tmp / "small"
        for d in (tmp / "big").iterdir():  # the first N images, as links (no second copy)
            (small / d.name).mkdir(parents=True)
        for i, f in enumerate(sorted((tmp / "big").rglob("*.png"), key=lambda p: p.name)):
            if i >= args.images:
                break
            os.link(f, small / f.parent.name / f.name)
        bare = bare_loop(small)
        ips, rss_small, counts, startup_s = run_ingest(small, tmp / "w1")
        _, rss_big, _, _ = run_ingest(tmp / "big", tmp / "w2")
        per_image_kb = (rss_big - rss_small) * 1024 / (args.big - args.images)
        rss_100k = rss_big + per_image_kb * (100_000 - args.big) / 1024
        print(
            json.dumps(
                {
                    "images": counts["images"],
                    "cores": os.cpu_count(),
                    "bare_decode_sha256_images_per_s": round(bare, 1),
                    "ingest_images_per_s": round(ips, 1),
                    "ratio_ingest_to_bare": round(ips / bare, 3),
                    "target_ratio": 0.7,
                    "process_start_s": round(startup_s, 2),
                    f"peak_rss_mb_{args.images}": round(rss_small, 1),
                    f"peak_rss_mb_{args.big}": round(rss_big, 1),
                    "rss_kb_per_extra_image": round(per_image_kb, 2),
                    "peak_rss_mb_100k_extrapolated": round(rss_100k, 1),
                    "target_rss_mb_100k": 1024,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

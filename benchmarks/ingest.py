"""Ingest throughput and memory, measured side by side in one run.

    .venv/bin/python benchmarks/ingest.py [--images 20000] [--big 40000]

Generates N small PNG images in <class>/ folders, then times, over the same files:
  * bare:   a loop of PIL decode + sha256 (the floor any ingest must pay), one process;
  * ingest: the ingest stage (decode, EXIF, RGB, write prepared PNG, manifest, report).
Prints ingest throughput as a ratio to the bare loop (target >= 0.7) and the stage's peak RSS
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
# Work files live in the workspace: on some machines /tmp creates files 20x slower than the disk.
BENCH_DIR = ROOT / ".frugalml" / "bench"


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
    files = sorted(src.rglob("*.png"))
    t0 = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    return len(files) / (time.perf_counter() - t0)


def run_ingest(src: Path, work: Path) -> tuple[float, float, dict]:
    """Run the real stage in a child process; returns (images/s, peak RSS MB, counts)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(f"data:\n  source: {src}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    code = ("import resource, sys; from tasks import ingest; from frugalml import config; "
            "from frugalml.costs import CostMeter\n"
            "cfg = config.load()\n"
            "with CostMeter('ingest', 'bench') as m: ingest.run(cfg, m)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    wall = time.perf_counter() - t0
    counts = json.loads((work / "metrics/ingest.json").read_text())["counts"]
    return counts["images"] / wall, int(out.stdout.strip().splitlines()[-1]) / 1024, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--big", type=int, default=40000)
    args = ap.parse_args()
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
        ips, rss_small, counts = run_ingest(small, tmp / "w1")
        _, rss_big, _ = run_ingest(tmp / "big", tmp / "w2")
        per_image_kb = (rss_big - rss_small) * 1024 / (args.big - args.images)
        rss_100k = rss_big + per_image_kb * (100_000 - args.big) / 1024
        print(json.dumps({
            "images": counts["images"], "cores": os.cpu_count(),
            "bare_decode_sha256_images_per_s": round(bare, 1), "ingest_images_per_s": round(ips, 1),
            "ratio_ingest_to_bare": round(ips / bare, 3), "target_ratio": 0.7,
            f"peak_rss_mb_{args.images}": round(rss_small, 1), f"peak_rss_mb_{args.big}": round(rss_big, 1),
            "rss_kb_per_extra_image": round(per_image_kb, 2), "peak_rss_mb_100k_extrapolated": round(rss_100k, 1),
            "target_rss_mb_100k": 1024,
        }, indent=2))


if __name__ == "__main__":
    main()

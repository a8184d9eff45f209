"""Train-stage throughput next to a bare torch loop, in one run.

    .venv/bin/python benchmarks/train.py [--epochs 3] [--arch resnet18] [--image-size 32]

Both train the same model on the same prepared images (scikit-learn digits, ingested with the
real ingest stage), with the same DataLoader, batch size, thread count and device:
  * stage: `python -m tasks.train` (progress, per-epoch validation and checkpoint included);
  * bare:  a plain loop: zero_grad, forward, loss, backward, step.
Steady state = the epochs after the first. ``--rounds`` alternates stage and bare that many
times in this one invocation (machine noise here is about +-10% between runs) and prints the
median of each round's ratio (target >= 0.97).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR  # noqa: E402


def bare_loop(work: Path, arch: str, image_size: int, batch: int, epochs: int, threads: int) -> float:
    import torch
    from torch import nn

    from frugalml.contracts import read_manifest
    from frugalml.model.modeling import ManifestDataset, build_model, train_transform

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    os.chdir(work)
    rows = [r for r in read_manifest() if r["split"] == "train"]
    classes = sorted({r["label"] for r in rows})
    ds = ManifestDataset(
        rows,
        work / "data" / "prepared",
        classes,
        train_transform(image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
    model = build_model(arch, len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, fused=True)  # as the stage builds it
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            seen += len(y)
        rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(
            "data:\n  source: builtin:digits\n"
            f"model:\n  arch: {args.arch}\n  image_size: {args.image_size}\n  pretrained: none\n"
            f"train:\n  epochs: {args.epochs}\n  batch_size: {args.batch}\n  num_threads: {args.threads}\n"
            "  checkpoint_to_s3: false\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FRUGALML_S3_ENDPOINT": ""}

        def stage_rate() -> float:
            res = subprocess.run(
                [sys.executable, "-m", "tasks.train"], cwd=work, env=env, capture_output=True, text=True
            )
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            curve = (work / "plots" / "train.csv").read_text().splitlines()[1:]
            return statistics.median([float(line.split(",")[-1]) for line in curve][1:])

        res = subprocess.run([sys.executable, "-m", "tasks.ingest"], cwd=work, env=env, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        stages, bares = [], []
        for r in range(args.rounds):
            stages.append(stage_rate())
            bares.append(bare_loop(work, args.arch, args.image_size, args.batch, args.epochs, args.threads))
            print(f"round {r + 1}: stage {stages[-1]:.1f} img/s, bare {bares[-1]:.1f} img/s", file=sys.stderr)
        ratios = [a / b for a, b in zip(stages, bares)]
        stage, bare = statistics.median(stages), statistics.median(bares)
        print(
            json.dumps(
                {
                    "arch": args.arch,
                    "image_size": args.image_size,
                    "batch": args.batch,
                    "threads": args.threads,
                    "device": json.loads((work / "metrics" / "train.json").read_text())["device"],
                    "stage_images_per_s": round(stage, 1),
                    "bare_images_per_s": round(bare, 1),
                    "ratio_stage_to_bare": round(statistics.median(ratios), 3),
                    "ratios": [round(r, 3) for r in ratios],
                    "target_ratio": 0.97,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

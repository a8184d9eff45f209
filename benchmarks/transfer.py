"""What a pretrained backbone buys with few labels, on builtin:shapes, in one run.

    .venv/bin/python benchmarks/transfer.py [--labels 0.2] [--epochs 12] [--seeds 3]

torchvision's ImageNet weights cannot be downloaded on the machine this was written on, so the
backbone is pretrained here the way a team reuses one of its own models, and the way transfer is
usually measured (disjoint classes of one domain): a resnet18 is trained on five classes of
builtin:shapes (circle, triangle, square, star, cross), packaged and registered by the real
stages. The five *other* classes (ring, crescent, pentagon, hexagon, arrow) are then learned from
only ``--labels`` of their images (most of the rest is the test split), four ways, each by the
real train and evaluate stages with the real cost meter:

  scratch          model.pretrained: none, all layers trained
  head             registry backbone frozen, only the new head trained
  last_n           the last residual stage and the head (backbone lr x 0.1)
  full             every layer (backbone lr x 0.1)

Prints test accuracy (median over seeds, with min-max) and the train stage's $ per config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR  # noqa: E402

SOURCE_CLASSES = ("circle", "triangle", "square", "star", "cross")
TARGET_CLASSES = ("ring", "crescent", "pentagon", "hexagon", "arrow")
CONFIGS = {
    "scratch": {"model.pretrained": "none", "train.finetune": "full", "train.backbone_lr_mult": 1.0},
    "head": {"train.finetune": "head"},
    "last_n": {"train.finetune": "last_n", "train.finetune_last_n": 1, "train.backbone_lr_mult": 0.1},
    "full": {"train.finetune": "full", "train.backbone_lr_mult": 0.1},
}


def sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{res.stderr[-3000:]}")
    return res


def stages(work: Path, env: dict, names) -> None:
    for stage in names:
        sh([sys.executable, "-m", f"tasks.{stage}"], work, env)


def set_params(work: Path, base: dict, overrides: dict) -> None:
    from frugalml.config import write_overrides

    (work / "params.yaml").write_text("{}\n")
    write_overrides(work / "params.yaml", [f"{k}={v}" for k, v in {**base, **overrides}.items()])


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    from frugalml.embedded import EmbeddedS3

    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=float, default=0.2, help="share of the target classes' images trained on")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }
        env["PYTHONPATH"] = str(ROOT)
        common = {
            "model.arch": "resnet18",
            "model.pretrained": "none",  # the backbone pretrained below is our own (the target runs override)
            "model.image_size": args.image_size,
            "train.checkpoint_to_s3": False,
            "evaluate.latency_samples": 5,
            "gates.min_accuracy": 0.0,
            "gates.max_regression": "null",
        }
        from frugalml.builtin import materialize

        shapes = materialize("builtin:shapes", ROOT)
        for folder, classes in (("source", SOURCE_CLASSES), ("target", TARGET_CLASSES)):
            for c in classes:
                shutil.copytree(shapes / c, work / folder / c)
        server = EmbeddedS3(work)
        server.up()
        try:
            set_params(
                work,
                common,
                {
                    "data.source": str(work / "source"),
                    "model.name": "shapes-backbone",
                    "train.epochs": args.pretrain_epochs,
                },
            )
            stages(work, env, ("ingest", "validate", "train", "evaluate", "gate", "package"))
            version = json.loads((work / "metrics/package.json").read_text())["version"]
            pre_acc = json.loads((work / "metrics/eval.json").read_text())["accuracy"]
            pre_usd = json.loads((work / "costs/train.json").read_text())["total_usd"]
            for d in ("data", "metrics", "costs", "models", "plots"):
                shutil.rmtree(work / d, ignore_errors=True)
            rest = (1 - args.labels) / 8
            target = {
                **common,
                "data.source": str(work / "target"),
                "model.name": "shapes-target",
                "data.splits.train": args.labels,
                "data.splits.val": round(rest, 6),
                "data.splits.test": round(1 - args.labels - rest, 6),
                "model.pretrained": f"registry:shapes-backbone@{version}",
                "train.epochs": args.epochs,
                "train.warm_start.epochs": "null",
                "train.warm_start.lr_mult": 1.0,
                "validate.min_images_per_class": 5,
            }
            rows = {}
            for name, over in CONFIGS.items():
                accs, usd, wall = [], [], []
                for seed in range(args.seeds):
                    set_params(work, target, {**over, "train.seed": seed})
                    stages(work, env, ("ingest", "train", "evaluate"))
                    accs.append(json.loads((work / "metrics/eval.json").read_text())["accuracy"])
                    cost = json.loads((work / "costs/train.json").read_text())
                    usd.append(cost["total_usd"])
                    wall.append(cost["wall_s"])
                    print(f"{name} seed {seed}: accuracy {accs[-1]:.4f}, train {cost['wall_s']:.0f} s", file=sys.stderr)
                rows[name] = {
                    "accuracy_median": round(statistics.median(accs), 4),
                    "accuracy_min": round(min(accs), 4),
                    "accuracy_max": round(max(accs), 4),
                    "train_usd_median": round(statistics.median(usd), 6),
                    "train_wall_s_median": round(statistics.median(wall), 1),
                }
            manifest = (work / "data/manifest.csv").read_text().splitlines()[1:]
            print(
                json.dumps(
                    {
                        "backbone": f"resnet18 pretrained on shapes {', '.join(SOURCE_CLASSES)} "
                        f"({args.pretrain_epochs} epochs, "
                        f"test accuracy {pre_acc:.4f}, train ${pre_usd:.5f}), registry version {version}",
                        "target": f"shapes {', '.join(TARGET_CLASSES)} at {args.image_size} px, "
                        f"{sum(',train,' in ln for ln in manifest)} training labels, "
                        f"{sum(',test,' in ln for ln in manifest)} test images, {args.epochs} epochs, "
                        f"{args.seeds} seeds",
                        "configs": rows,
                    },
                    indent=2,
                )
            )
        finally:
            server.down()
            shutil.rmtree(work / ".frugalml" / "bentoml", ignore_errors=True)


if __name__ == "__main__":
    main()

"""The frozen-backbone feature cache: epoch cost with and without it, and the accuracy of both.

    .venv/bin/python benchmarks/feature_cache.py [--reps 3] [--image-size 64]

On builtin:shapes (3,000 images, 10 classes), a resnet18 head trained with ``train.finetune:
head`` and no augmentation, by the real train and evaluate stages with the real cost meter. The
per-epoch cost is measured as a slope, so that start-up and the one-off feature pass cancel:
(train stage wall at 6 epochs - wall at 2 epochs) / 4, priced at the price sheet, for

  no cache     train.feature_cache: false (every epoch runs the frozen backbone)
  cache        train.feature_cache: true with the cache already filled by an earlier run

It also reports the one-off cost of filling the cache (a first run's wall minus a warm run's)
and the test accuracy of the 6-epoch models of both. Median of ``--reps`` side-by-side rounds.
The backbone is randomly initialised (``model.pretrained: none``; no weights can be downloaded
here): the cost does not depend on the weights, and both paths train bitwise the same head.
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
from _common import BENCH_DIR, exit_cleanly_on_sigterm  # noqa: E402

NO_AUG = {
    "train.augment.rotation_deg": 0,
    "train.augment.translate": 0,
    "train.augment.scale_min": 1,
    "train.augment.scale_max": 1,
}


def sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{res.stderr[-3000:]}")
    return res


def set_params(work: Path, params: dict) -> None:
    from frugalml.core.config import write_overrides

    (work / "params.yaml").write_text("{}\n")
    write_overrides(work / "params.yaml", [f"{k}={v}" for k, v in params.items()])


def train(work: Path, env: dict, params: dict, epochs: int, evaluate: bool = False) -> dict:
    set_params(work, {**params, "train.epochs": epochs})
    sh([sys.executable, "-m", "tasks.train"], work, env)
    out = json.loads((work / "costs/train.json").read_text())
    if evaluate:
        sh([sys.executable, "-m", "tasks.evaluate"], work, env)
        out["accuracy"] = json.loads((work / "metrics/eval.json").read_text())["accuracy"]
    return out


def main() -> None:
    exit_cleanly_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID")}
    env["PYTHONPATH"] = str(ROOT)
    base = {
        "data.source": "builtin:shapes",
        "model.arch": "resnet18",
        "model.image_size": args.image_size,
        "model.pretrained": "none",
        "train.finetune": "head",
        "train.lr": 0.01,
        "train.checkpoint_to_s3": False,
        "evaluate.latency_samples": 5,
        **NO_AUG,
    }
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        set_params(work, base)
        sh([sys.executable, "-m", "tasks.ingest"], work, env)
        rows = {"no_cache": [], "cache": [], "fill": [], "acc_no_cache": [], "acc_cache": []}
        for rep in range(args.reps):
            off = {**base, "train.feature_cache": "false"}
            on = {**base, "train.feature_cache": "true"}
            shutil.rmtree(work / ".frugalml" / "features", ignore_errors=True)
            cold = train(work, env, on, 2)  # fills the cache
            warm2 = train(work, env, on, 2)
            warm6 = train(work, env, on, 6, evaluate=True)
            off2 = train(work, env, off, 2)
            off6 = train(work, env, off, 6, evaluate=True)
            rows["cache"].append((warm6["wall_s"] - warm2["wall_s"]) / 4)
            rows["no_cache"].append((off6["wall_s"] - off2["wall_s"]) / 4)
            rows["fill"].append(cold["wall_s"] - warm2["wall_s"])
            rows["acc_cache"].append(warm6["accuracy"])
            rows["acc_no_cache"].append(off6["accuracy"])
            print(
                f"round {rep + 1}: epoch {rows['no_cache'][-1]:.2f} s without the cache, "
                f"{rows['cache'][-1]:.3f} s with it; filling it {rows['fill'][-1]:.1f} s; accuracy "
                f"{off6['accuracy']:.4f} / {warm6['accuracy']:.4f}",
                file=sys.stderr,
            )
        from frugalml.core.config import CostsConfig
        from frugalml.core.costs import price

        per_s = price({"wall_s": 1.0}, CostsConfig())["total_usd"]
        med = {k: statistics.median(v) for k, v in rows.items()}
        floor = max(med["cache"], 0.01)  # below the resolution of two stage walls
        print(
            json.dumps(
                {
                    "setup": f"builtin:shapes at {args.image_size} px, resnet18 head, {args.reps} rounds (median)",
                    "epoch_s_no_cache": round(med["no_cache"], 3),
                    "epoch_s_cache": round(med["cache"], 3),
                    "epoch_usd_no_cache": round(med["no_cache"] * per_s, 7),
                    "epoch_usd_cache": round(med["cache"] * per_s, 7),
                    "epoch_cost_ratio": round(med["no_cache"] / floor, 1),
                    "fill_once_s": round(med["fill"], 2),
                    "accuracy_no_cache": med["acc_no_cache"],
                    "accuracy_cache": med["acc_cache"],
                    "accuracy_delta_pp": round(100 * (med["acc_cache"] - med["acc_no_cache"]), 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

"""``frugalml estimate`` against what the train stage then costs, for four configs (three on the
pretrained default backbone, one from scratch).

    .venv/bin/python benchmarks/estimate.py

On builtin:shapes, in a fresh workspace each (no run history, so the estimate is the measured
probe): the estimated wall and USD of the train stage, then the real train stage with the real
cost meter, and the error. Target: within 25%.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR, exit_cleanly_on_sigterm  # noqa: E402
from feature_cache import NO_AUG, set_params, sh  # noqa: E402

LITE0 = {"model.arch": "timm/tf_efficientnet_lite0", "model.pretrained": "imagenet"}  # the default backbone
CONFIGS = {
    "lite0 ImageNet 64px full 2 epochs": {**LITE0, "model.image_size": 64, "train.epochs": 2},
    "lite0 ImageNet 96px last_n 2 epochs": {
        **LITE0,
        "model.image_size": 96,
        "train.finetune": "last_n",
        "train.epochs": 2,
    },
    "lite0 ImageNet 64px head (feature cache) 5 epochs": {
        **LITE0,
        "model.image_size": 64,
        "train.finetune": "head",
        "train.epochs": 5,
        **NO_AUG,
    },
    "resnet18 from scratch 32px full 3 epochs": {
        "model.arch": "resnet18",
        "model.pretrained": "none",
        "model.image_size": 32,
        "train.epochs": 3,
    },
}


def main() -> None:
    exit_cleanly_on_sigterm()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID")}
    env["PYTHONPATH"] = str(ROOT)
    base = {"data.source": "builtin:shapes", "train.checkpoint_to_s3": False}
    out = {}
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        set_params(work, base)
        sh([sys.executable, "-m", "tasks.ingest"], work, env)
        for name, over in CONFIGS.items():
            shutil.rmtree(work / ".frugalml" / "features", ignore_errors=True)
            set_params(work, {**base, **over})
            res = sh([sys.executable, "-m", "frugalml.cli", "estimate", "--json"], work, env)
            est = next(s for s in json.loads(res.stdout)["stages"] if s["stage"] == "train")
            sh([sys.executable, "-m", "tasks.train"], work, env)
            actual = json.loads((work / "costs/train.json").read_text())
            err = (est["wall_s"] - actual["wall_s"]) / actual["wall_s"]
            out[name] = {
                "estimate_s": est["wall_s"],
                "actual_s": actual["wall_s"],
                "estimate_usd": est["usd"],
                "actual_usd": actual["total_usd"],
                "error_pct": round(100 * err, 1),
                "basis": est["basis"],
            }
            print(
                f"{name}: estimate {est['wall_s']:.1f} s, actual {actual['wall_s']:.1f} s ({100 * err:+.1f}%)",
                file=sys.stderr,
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

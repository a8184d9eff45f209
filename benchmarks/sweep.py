"""A full grid run to the end against pruned sweeps over the same space, on builtin:shapes.

    .venv/bin/python benchmarks/sweep.py [--epochs 6]

The space: 2 archs x 2 image sizes x 2 fine-tuning depths (8 settings), every trial
``--epochs`` epochs, from scratch (no pretrained weights are reachable here). Three real
``frugalml sweep`` runs in one throwaway workspace, each trial a DVC experiment with the real
train and evaluate stages and their cost meters:

- ``grid``: every setting, no pruner: the reference;
- ``grid + successive halving``: every setting, trials trailing the others at epoch 1, 2, 4 ...
  are stopped (what pruning alone saves);
- ``tpe + hyperband, half the trials``: the sweep as a team would run it with a budget.

For each: the best test accuracy, the $ spent (every trial billed at its whole wall time,
pruned ones included) and ``cost ratio = sweep $ / grid $``. The grid's ``floor_ratio`` is its
best trial's $ over the grid's: the lowest cost ratio of any sweep that finds that setting and
trains it to the end.
Target: cost ratio <= 0.34 with the best accuracy within 0.5 pp of the grid's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, ROOT, bin_on_path, exit_cleanly_on_sigterm, pipeline_repo  # noqa: E402

SPACE = "{model.arch: [resnet18, mobilenet_v3_small], model.image_size: [32, 64], train.finetune: [head, full]}"
GRID = 8
VARIANTS = {
    "grid": ["sweep.sampler=grid", "sweep.pruner=none", f"sweep.max_trials={GRID}"],
    "grid + successive halving": ["sweep.sampler=grid", "sweep.pruner=successive_halving", f"sweep.max_trials={GRID}"],
    "tpe + hyperband, half as many trials": [
        "sweep.sampler=tpe",
        "sweep.pruner=hyperband",
        f"sweep.max_trials={GRID // 2}",
    ],
}


def sh(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    from frugalml.embedded import EmbeddedS3

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "frugalml.cli"]
    results = {}
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        env = bin_on_path(
            {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_", "PREFECT_API"))}
        )
        env["PYTHONPATH"] = str(ROOT)
        repo = pipeline_repo(Path(tmp) / "repo", env)
        server = EmbeddedS3(repo, bucket="frugalml")
        server.up()
        try:
            base = [
                "data.source=s3://frugalml/sources/shapes",
                "model.pretrained=none",
                f"train.epochs={args.epochs}",
                "train.checkpoint_to_s3=false",
                f"sweep.space={SPACE}",
                "sweep.budget_usd=10",
            ]
            sh(cli + ["data", "upload", "builtin:shapes", "s3://frugalml/sources/shapes"], repo, env)
            from frugalml.config import write_overrides

            write_overrides(repo / "params.yaml", base)
            sh(["git", "add", "-A"], repo, env)
            sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], repo, env)
            for name, settings in VARIANTS.items():
                print(f"{name}: sweeping ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                sh(cli + ["sweep", *(a for s in settings for a in ("--set", s))], repo, env)
                wall = time.perf_counter() - t0
                record = json.loads(sh(cli + ["frontier", "--json"], repo, env).stdout)
                trials = record["trials"]
                failed = [t for t in trials if t["state"] == "failed"]
                if failed:
                    raise SystemExit(f"{name}: {len(failed)} trials failed; the first: {failed[0]['message']}")
                best = max(trials, key=lambda t: t.get("accuracy") or 0.0)
                results[name] = {
                    "trials": len(trials),
                    "pruned": sum(t["state"] == "pruned" for t in trials),
                    "usd": record["spent_usd"],
                    "wall_s": round(wall, 1),
                    "best_accuracy": best.get("accuracy"),
                    "best_settings": best["overrides"],
                    "best_trial_usd": best["usd"],
                    "cheapest_trial_usd": min(t["usd"] for t in trials),
                }
                print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        finally:
            server.down()
    grid = results["grid"]
    # no sweep that trains the grid's best setting to the end can cost less than that trial alone
    grid["floor_ratio"] = round(grid["best_trial_usd"] / grid["usd"], 3)
    for name, r in results.items():
        if name != "grid":
            r["cost_ratio"] = round(r["usd"] / grid["usd"], 3)
            r["accuracy_gap_pp"] = round(100 * (grid["best_accuracy"] - r["best_accuracy"]), 2)
    results["targets"] = {"cost_ratio": "<= 0.34", "accuracy_gap_pp": "<= 0.5"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

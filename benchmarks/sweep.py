"""A full grid run to the end against a pruned sweep over the same space, on builtin:shapes,
repeated ``--runs`` times (each run in a fresh workspace: its own store and feature cache; the
feature cache the grid filled is emptied before the sweep, which pays for its own).

    .venv/bin/python benchmarks/sweep.py [--epochs 2] [--runs 3]

The space is the decision a team faces with a pretrained backbone: where to start (EfficientNet-
Lite0 from its ImageNet weights, or the same network from scratch) x input size (32, 64 px) x how
deep to fine-tune (head, last_n, full): 12 settings, every trial ``--epochs`` epochs. Augmentation
is off, so head-only trials train on the frozen backbone's cached features (train.feature_cache).
Real ``frugalml sweep`` runs, each trial a DVC experiment with the real train and evaluate stages
and their cost meters:

- ``grid``: every setting, no pruner: the reference;
- ``tpe + hyperband``: the sweep as a team runs it (defaults: ``sweep.screen`` on), with a
  budget: a third of what the grid spent (``sweep.budget_usd``), up to as many trials. The
  screen first trains the head alone on each start's cached features (ImageNet / scratch x 32 /
  64 px) in the sweep's process; the best start's deeper fine-tunings (full, then last_n) are the
  first trials; then Optuna's TPE (which samples at random for its first trials) and the pruner
  (stops trials trailing the others at epoch 1, 2 ...); the last trial trains on what is left.

For each: the best test accuracy, the $ spent (every trial billed as its stages are, pruned ones
included) and ``cost ratio = sweep $ / grid $``. The grid's ``floor_ratio`` is its best trial's $
over the grid's: the lowest cost ratio of any sweep that finds that setting and trains it to the
end. What the cheap parts contribute is printed per run: the share of the grid's $ spent on
head-only trials (feature cache), the screen's $ as a share of the grid's (``screen_ratio``) and
the $ the pruner saved (pruned trials' epochs not trained). ``--no-screen`` runs the sweep
without the screen (``sweep.screen=false``), for comparison.
Target: cost ratio <= 0.34 with the best accuracy within 0.5 pp of the grid's, median of the runs.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, ROOT, bin_on_path, exit_cleanly_on_sigterm, pipeline_repo  # noqa: E402

SPACE = "{model.pretrained: [imagenet, none], model.image_size: [32, 64], train.finetune: [head, last_n, full]}"
GRID = 12
VARIANTS = {
    "grid": ["sweep.sampler=grid", "sweep.pruner=none", f"sweep.max_trials={GRID}"],
    # as many trials as the grid, but a third of what the grid spent as its budget
    "tpe + hyperband": ["sweep.sampler=tpe", "sweep.pruner=hyperband", f"sweep.max_trials={GRID}"],
}
NO_AUGMENT = [
    "train.augment.rotation_deg=0",
    "train.augment.translate=0",
    "train.augment.scale_min=1",
    "train.augment.scale_max=1",
]


def sh(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def one_run(run: int, epochs: int, screen: bool = True) -> dict:
    """Both variants in a fresh workspace: its own store, DVC repo and feature cache."""
    from frugalml.core.config import write_overrides
    from frugalml.core.embedded import EmbeddedS3

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
                "model.arch=timm/tf_efficientnet_lite0",
                f"train.epochs={epochs}",
                "train.checkpoint_to_s3=false",
                *NO_AUGMENT,
                f"sweep.space={SPACE}",
                "sweep.budget_usd=10",
            ]
            sh(cli + ["data", "upload", "builtin:shapes", "s3://frugalml/sources/shapes"], repo, env)
            write_overrides(repo / "params.yaml", base)
            sh(["git", "add", "-A"], repo, env)
            sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], repo, env)
            for name, settings in VARIANTS.items():
                if name != "grid":  # each run samples its own settings: sweep.seed = the run's number
                    forget_features(repo, env)  # the sweep pays for its own features, as on a fresh machine
                    settings = [*settings, f"sweep.budget_usd={results['grid']['usd'] / 3:.6f}", f"sweep.seed={run}"]
                    settings.append(f"sweep.screen={str(screen).lower()}")
                print(f"run {run}, {name}: sweeping ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                sh(cli + ["sweep", *(a for s in settings for a in ("--set", s))], repo, env)
                wall = time.perf_counter() - t0
                record = json.loads(sh(cli + ["frontier", "--json"], repo, env).stdout)
                results[name] = summarise(record, wall, epochs)
                print(f"run {run}, {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        finally:
            server.down()
    grid = results["grid"]
    # no sweep that trains the grid's best setting to the end can cost less than that trial alone
    grid["floor_ratio"] = round(grid["best_trial_usd"] / grid["usd"], 3)
    grid["head_share"] = round(grid.pop("head_usd") / grid["usd"], 3)
    for name, r in results.items():
        if name != "grid":
            r["cost_ratio"] = round(r["usd"] / grid["usd"], 3)
            r["accuracy_gap_pp"] = round(100 * (grid["best_accuracy"] - r["best_accuracy"]), 2)
            r["pruner_saved_ratio"] = round(r.pop("pruned_saved_usd") / grid["usd"], 3)
            r["screen_ratio"] = round(r["screen_usd"] / grid["usd"], 3)
            r.pop("head_usd")
    return results


def forget_features(repo: Path, env: dict) -> None:
    """The feature cache the grid's head trials filled, here and in the store: without this the
    sweep's screen and head trials would read the grid's features for free."""
    code = (
        "from frugalml.core import config; from frugalml.core.store import Store; "
        "s = Store.from_config(config.load().storage); [s.delete(o['key']) for o in list(s.list('features/'))]"
    )
    sh([sys.executable, "-c", code], repo, env)
    shutil.rmtree(repo / ".frugalml" / "features", ignore_errors=True)


def summarise(record: dict, wall: float, epochs: int) -> dict:
    trials = record["trials"]
    failed = [t for t in trials if t["state"] == "failed"]
    if failed:
        raise SystemExit(f"{len(failed)} trials failed; the first: {failed[0]['message']}")
    best = max(trials, key=lambda t: t.get("accuracy") or 0.0)
    saved = 0.0
    for t in trials:
        if t["state"] == "pruned" and t.get("epochs_run"):
            # the epochs the pruner did not train, at this trial's own $ per epoch
            saved += t["train_usd"] / t["epochs_run"] * (epochs - t["epochs_run"])
    return {
        "trials": len(trials),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        # the trials alone: the grid, run first, also paid the data preparation (billed to its record)
        "usd": round(record["spent_usd"] - record.get("prep_usd", 0.0), 6),
        "wall_s": round(wall, 1),
        "best_accuracy": best.get("accuracy"),
        "best_settings": best["overrides"],
        "best_trial_usd": best["usd"],
        "cheapest_trial_usd": min(t["usd"] for t in trials),
        "head_usd": sum(t["usd"] for t in trials if "train.finetune=head" in t["overrides"]),
        "pruned_saved_usd": saved,
        "screen_usd": record.get("screen_usd", 0.0),
        "screen": {" ".join(r["overrides"]): r["val_accuracy"] for r in record.get("screen", [])},
        "order": [" ".join(t["overrides"]) for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-screen", action="store_true", help="the sweep without sweep.screen")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    runs = [one_run(i + 1, args.epochs, screen=not args.no_screen) for i in range(args.runs)]
    for i, r in enumerate(runs, 1):
        print(json.dumps({"run": i, **r}))
    sweep = [r["tpe + hyperband"] for r in runs]
    print(
        json.dumps(
            {
                "median": {
                    "cost_ratio": statistics.median(r["cost_ratio"] for r in sweep),
                    "accuracy_gap_pp": statistics.median(r["accuracy_gap_pp"] for r in sweep),
                    "grid_floor_ratio": statistics.median(r["grid"]["floor_ratio"] for r in runs),
                    "grid_head_share": statistics.median(r["grid"]["head_share"] for r in runs),
                    "pruner_saved_ratio": statistics.median(r["pruner_saved_ratio"] for r in sweep),
                    "screen_ratio": statistics.median(r["screen_ratio"] for r in sweep),
                },
                "targets": {"cost_ratio": "<= 0.34", "accuracy_gap_pp": "<= 0.5"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

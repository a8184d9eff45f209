"""What `frugalml labels` is worth on features that know something: the default backbone
(EfficientNet-Lite0 from its ImageNet weights, the pip package), on the demo's datasets.

    .venv/bin/python benchmarks/labels.py [--datasets digits,shapes] [--rounds 5] [--seeds 16]
        [--image-size 64] [--audit-models head,train] [--train-audit-on digits] [--audit-set K=V ...]

For each dataset (``digits``: 1,797 images of 8x8 px upscaled, 10 classes; ``shapes``: 3,000 of
64 px, 10 classes), at ``--image-size`` (64), two throwaway pipeline repos, each with its own
embedded SeaweedFS, prepared with `frugalml run --until validate`:

* **curve backtest** (clean digits): `frugalml labels curve --json`; the curve fitted on the
  fractions <= 0.5 predicts the accuracy on the whole train split, against the measured one
  (target: within 2 pp);
* **audit** (5% of the labels flipped at random to another class before ingest):
  `frugalml labels audit --json`, once per ``--audit-models`` (``labels.audit_model``: ``head``, a
  head on the frozen features; ``train``, the train stage's model trained once per fold, only
  on the datasets named by ``--train-audit-on``: minutes each); precision and recall of the
  flagged images against the flipped ones (target: both >= 0.9);
* **active vs random** (clean digits, on the frozen features the commands use): the train and val
  splits are the pool; from 10% of it labeled (stratified), ``--rounds`` rounds that each add 4%
  of it, chosen by `labels next`'s selection (``annotation.choose``: the ``labels.candidates`` x
  the batch most uncertain by margin, k-means into batch clusters, the most uncertain of each) or
  at random; test accuracy of the head after each round, averaged over ``--seeds`` starts (the
  test split of digits has only 245 images: one image is 0.4 pp, so many starts are averaged).
  Target: active reaches random's final accuracy with >= 30% fewer labels, or is >= 2 pp higher
  at equal labels. The labels active needed are read at the first round that reaches it, and
  also where its curve crosses it, linearly between rounds (``..._interpolated``): rounds alone
  can only say 0, 20, 40 ... % saved.

Prints each command's wall time and USD, and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, ROOT, bin_on_path, exit_cleanly_on_sigterm, pipeline_repo  # noqa: E402

sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-m", "frugalml.cli"]


def sh(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def prepared_repo(path: Path, source: Path, env: dict, started: list[Path], image_size: int) -> Path:
    """A pipeline repo on ``source`` with its own embedded store (listed in ``started`` before it
    starts, so that the caller stops it), prepared up to validation."""
    from frugalml.core.config import write_overrides

    repo = pipeline_repo(path, env)
    started.append(repo)
    write_overrides(repo / "params.yaml", [f"data.source={source}", f"model.image_size={image_size}"])
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], repo, env)
    sh(CLI + ["storage", "up"], repo, env)
    sh(CLI + ["run", "--until", "validate"], repo, env)
    return repo


def flip(src: Path, share: float, seed: int) -> set[str]:
    """Move ``share`` of the images to another class folder; their new source paths."""
    rng = np.random.default_rng(seed)
    files = sorted(src.rglob("*.png"))
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    flipped = set()
    for i in rng.choice(len(files), round(share * len(files)), replace=False):
        f = files[i]
        wrong = rng.choice([c for c in classes if c != f.parent.name])
        shutil.move(f, src / wrong / f.name)
        flipped.add(f"{wrong}/{f.name}")
    return flipped


def active_vs_random(repo: Path, rounds: int, seeds: int) -> dict:
    """Rounds of labels chosen by `labels next`'s selection vs at random, on the cached features."""
    os.chdir(repo)
    from frugalml.core import config
    from frugalml.decide import labels
    from frugalml.decide.annotation import choose

    cfg = config.load()
    data = labels.labeled_features(cfg)
    pool, test = np.concatenate([data.split("train"), data.split("val")]), data.split("test")
    X, y = data.X[pool], data.y[pool]
    c_head = labels.choose_c(X, y, 0)
    step = round(0.04 * len(pool))
    how_many = cfg.labels.candidates
    curves = {"active": [], "random": []}
    for seed in range(seeds):
        start = labels.nested_subsets(y, [0.1], seed)[0]
        for how in curves:
            have, rng, accs = list(start), np.random.default_rng(seed), []
            for r in range(rounds + 1):
                head = labels.make_head(0, c_head).fit(X[have], y[have])
                accs.append(float((head.predict(data.X[test]) == data.y[test]).mean()))
                if r == rounds:
                    break
                rest = np.setdiff1d(np.arange(len(pool)), have)
                if how == "active":
                    picked, _, _ = choose(X[have], y[have], X[rest], step, cfg.labels.uncertainty, how_many, 0)
                    have += [int(rest[i]) for i in picked]
                else:
                    have += [int(i) for i in rng.choice(rest, step, replace=False)]
            curves[how].append(accs)
    n = [len(start) + r * step for r in range(rounds + 1)]  # the same sizes for every seed (stratified)
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    final_random = mean["random"][-1]
    # the first round that reaches random's final accuracy, and where the curve crosses it
    # (linearly between that round and the one before)
    reach = crossed = None
    i = next((i for i, a in enumerate(mean["active"]) if a >= final_random), None)
    if i is not None:
        reach = crossed = n[i]
        if i:
            a, before = mean["active"][i], mean["active"][i - 1]
            crossed = n[i - 1] + (final_random - before) / (a - before) * (n[i] - n[i - 1])

    def saved(labels):
        return None if labels is None else round(1 - (labels - n[0]) / (n[-1] - n[0]), 3)

    return {
        "pool": len(pool),
        "test_images": len(test),
        "candidates": how_many,
        "labels": n,
        "active_accuracy": [round(a, 4) for a in mean["active"]],
        "random_accuracy": [round(a, 4) for a in mean["random"]],
        "gain_at_equal_labels_pp": [round(100 * (a - b), 2) for a, b in zip(mean["active"], mean["random"])],
        "active_labels_to_reach_random_final": reach,
        "labels_saved_share": saved(reach),
        "active_labels_to_reach_random_final_interpolated": None if crossed is None else round(crossed, 1),
        "labels_saved_share_interpolated": saved(crossed),
        "seeds": seeds,
    }


def one_dataset(name: str, tmp: Path, env: dict, repos: list[Path], args) -> dict:
    from frugalml.data.builtin import write_digits, write_shapes

    write = write_digits if name == "digits" else write_shapes
    out: dict = {}
    print(f"{name}, clean: preparing ...", file=sys.stderr, flush=True)
    clean = prepared_repo(tmp / f"{name}-clean", write(tmp / name), env, repos, args.image_size)
    curve = json.loads(sh(CLI + ["labels", "curve", "--json"], clean, env).stdout)
    out["curve"] = {
        "backtest_predicted": round(curve["backtest_predicted"], 4),
        "backtest_measured": round(curve["backtest_measured"], 4),
        "backtest_error_pp": curve["backtest_error_pp"],
        "fit": curve["fit"],
        "wall_s": curve["wall_s"],
        "usd": curve["usd"],
        "target": "|error| <= 2 pp",
    }
    print(f"{name} curve: {json.dumps(out['curve'])}", file=sys.stderr, flush=True)

    print(f"{name}, 5% of the labels flipped: preparing ...", file=sys.stderr, flush=True)
    noisy_src = write(tmp / f"{name}-noisy")
    flipped = flip(noisy_src, 0.05, seed=11)
    noisy = prepared_repo(tmp / f"{name}-noisy-repo", noisy_src, env, repos, args.image_size)
    models = [m for m in args.audit_models.split(",") if m != "train" or name in args.train_audit_on.split(",")]
    for model in models:  # side by side on the same flipped labels
        cmd = CLI + ["labels", "audit", "--json", "--set", f"labels.audit_model={model}"]
        cmd += [a for kv in args.audit_set for a in ("--set", kv)]
        audit = json.loads(sh(cmd, noisy, env).stdout)
        csv_rows = (noisy / "reports" / "label_audit.csv").read_text().splitlines()[1:]
        flagged = {r.split(",")[0] for r in csv_rows}
        hit = len(flagged & flipped)
        out[f"audit_{model}"] = {
            "model": audit["head"],
            "out_of_sample_accuracy": audit["out_of_sample_accuracy"],
            "flipped": len(flipped),
            "flagged": len(flagged),
            "precision": round(hit / max(1, len(flagged)), 3),
            "recall": round(hit / len(flipped), 3),
            "wall_s": audit["wall_s"],
            "usd": audit["usd"],
            "target": "precision and recall >= 0.9",
        }
        print(f"{name} audit ({model}): {json.dumps(out[f'audit_{model}'])}", file=sys.stderr, flush=True)

    if args.rounds:
        print(f"{name}, active vs random ...", file=sys.stderr, flush=True)
        cwd = os.getcwd()
        try:
            out["active_vs_random"] = active_vs_random(clean, args.rounds, args.seeds)
        finally:
            os.chdir(cwd)
        target = ">= 30% fewer labels to random's final accuracy, or >= 2 pp at equal"
        out["active_vs_random"]["target"] = target
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="digits,shapes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="active vs random: rounds (0: skip it)")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--audit-models", default="head,train", help="labels.audit_model values, side by side")
    parser.add_argument("--train-audit-on", default="digits", help="datasets the (slow) train audit runs on")
    parser.add_argument(
        "--audit-set", action="append", default=[], metavar="KEY=VALUE", help="more --set for the audits (repeatable)"
    )
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    env = bin_on_path({k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_", "PREFECT_API"))})
    env["PYTHONPATH"] = str(ROOT)
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        repos: list[Path] = []
        try:
            for name in args.datasets.split(","):
                out[name] = one_dataset(name, Path(tmp), env, repos, args)
        finally:
            for repo in repos:
                subprocess.run(CLI + ["storage", "down"], cwd=repo, env=env, capture_output=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

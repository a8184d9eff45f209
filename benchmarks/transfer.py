"""What does accuracy cost, labels included? builtin:shapes learned from 20, 60 and 200 labels a
class, from scratch or from ImageNet, in one run.

    .venv/bin/python benchmarks/transfer.py [--budgets 20,60,200] [--seeds 3] [--chart PATH]

builtin:shapes has 10 classes of 300 images. Each class keeps the same 80 test and 20 validation
images for every budget; the training labels are the first 20, 60 or 200 of the other 200
(nested: the 60 hold the 20). For each budget, four ways to train, each by the real ingest, train
and evaluate stages with the real cost meter and the default settings otherwise
(EfficientNet-Lite0, 64 px, 6 epochs, augmentation on):

  scratch          model.pretrained: none, every layer trained
  imagenet head    the ImageNet backbone (the pip package's weights) frozen, the new head trained
  imagenet last_n  the last block and the head
  imagenet full    every layer

Per config: test accuracy (median of ``--seeds`` training seeds, with min-max), compute $ (the
train and evaluate stages), labeling $ (the labels x costs.labeling_usd_per_image) and total $.
A chart of total $ against accuracy with the Pareto front goes to ``--chart``. And what
`frugalml labels curve` predicts, from the smallest budget alone, for the larger ones, next to
what the head (its model: a head on the frozen features) measured there.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import BENCH_DIR, exit_cleanly_on_sigterm  # noqa: E402

TEST_PER_CLASS, VAL_PER_CLASS = 80, 20
CONFIGS = {
    "scratch": {"model.pretrained": "none", "train.finetune": "full"},
    "imagenet head": {"train.finetune": "head"},
    "imagenet last_n": {"train.finetune": "last_n"},
    "imagenet full": {"train.finetune": "full"},
}


def sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{res.stderr[-3000:]}")
    return res


def stages(work: Path, env: dict, names) -> None:
    for stage in names:
        sh([sys.executable, "-m", f"tasks.{stage}"], work, env)


def set_params(work: Path, overrides: dict) -> None:
    from frugalml.core.config import write_overrides

    (work / "params.yaml").write_text("{}\n")
    write_overrides(work / "params.yaml", [f"{k}={v}" for k, v in overrides.items()])


def budget_source(shapes: Path, dest: Path, per_class: int) -> Path:
    """train/, val/ and test/ folders: the same val and test images for every budget."""
    for cls in sorted(p.name for p in shapes.iterdir() if p.is_dir()):
        files = sorted((shapes / cls).glob("*.png"))
        test, val, pool = files[:TEST_PER_CLASS], files[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS], files[100:]
        if per_class > len(pool):
            raise SystemExit(f"--budgets: at most {len(pool)} labels a class")
        for split, chosen in (("train", pool[:per_class]), ("val", val), ("test", test)):
            (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy2(f, dest / split / cls / f.name)
    return dest


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other beats on both axes (cheaper or equal and more accurate), by $."""
    front, best = [], -1.0
    for usd, acc, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((usd, acc, name))
            best = acc
    return front


def chart(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5), dpi=110)
    markers = {"scratch": "x", "imagenet head": "o", "imagenet last_n": "s", "imagenet full": "D"}
    colours = dict(zip(sorted({r["labels_per_class"] for r in rows.values()}), ("#9ecae1", "#4292c6", "#08519c")))
    for key, r in rows.items():
        err = [[r["accuracy_median"] - r["accuracy_min"]], [r["accuracy_max"] - r["accuracy_median"]]]
        style = {"fmt": markers[r["config"]], "color": colours[r["labels_per_class"]], "markersize": 7, "capsize": 3}
        ax.errorbar(r["total_usd"], r["accuracy_median"], yerr=err, label=key, **style)
    front = pareto([(r["total_usd"], r["accuracy_median"], k) for k, r in rows.items()])
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#d62728", lw=1.2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("total $ (labels + compute), log scale")
    ax.set_ylabel("test accuracy (median of seeds, min-max)")
    ax.set_title("builtin:shapes, EfficientNet-Lite0 at 64 px: what accuracy costs, labels included")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: no point hidden
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    exit_cleanly_on_sigterm()
    from frugalml.core.config import Prices
    from frugalml.core.embedded import EmbeddedS3
    from frugalml.data.builtin import materialize
    from frugalml.decide.labels import power_law

    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="20,60,200", help="labels a class, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--chart", default=str(ROOT / "docs" / "img" / "transfer.png"))
    ap.add_argument("--replot", help="draw the chart again from this script's JSON output, without training")
    args = ap.parse_args()
    if args.replot:
        return chart(json.loads(Path(args.replot).read_text())["configs"], Path(args.chart))
    budgets = [int(b) for b in args.budgets.split(",")]
    price = Prices().labeling_usd_per_image
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    rows, curve = {}, {}
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_", "PREFECT_API"))}
        env["PYTHONPATH"] = str(ROOT)
        shapes = materialize("builtin:shapes", ROOT)
        classes = len([p for p in shapes.iterdir() if p.is_dir()])
        server = EmbeddedS3(work)
        server.up()
        try:
            for per_class in budgets:
                source = budget_source(shapes, work / f"labels-{per_class}", per_class)
                base = {
                    "data.source": str(source),
                    "train.checkpoint_to_s3": False,
                    "evaluate.latency_samples": 5,
                    "gates.min_accuracy": 0.0,
                    "validate.min_images_per_class": 5,
                }
                for d in ("data", "metrics", "costs", "models", "plots"):
                    shutil.rmtree(work / d, ignore_errors=True)
                set_params(work, base)
                stages(work, env, ("ingest", "validate"))
                if per_class == budgets[0]:  # what the curve predicts from the smallest budget alone
                    cli = [sys.executable, "-m", "frugalml.cli", "labels", "curve", "--json"]
                    curve = json.loads(sh(cli, work, env).stdout)
                for name, over in CONFIGS.items():
                    accs, usd = [], []
                    for seed in range(args.seeds):
                        set_params(work, {**base, **over, "train.seed": seed})
                        stages(work, env, ("train", "evaluate"))
                        accs.append(json.loads((work / "metrics/eval.json").read_text())["accuracy"])
                        spent = [json.loads((work / f"costs/{s}.json").read_text()) for s in ("train", "evaluate")]
                        usd.append(sum(c["total_usd"] for c in spent))
                        print(f"{per_class}/class {name} seed {seed}: accuracy {accs[-1]:.4f}, ${usd[-1]:.5f}",
                              file=sys.stderr, flush=True)  # fmt: skip
                    labels_usd = per_class * classes * price
                    compute = statistics.median(usd)
                    rows[f"{per_class}/class {name}"] = {
                        "labels_per_class": per_class,
                        "config": name,
                        "accuracy_median": round(statistics.median(accs), 4),
                        "accuracy_min": round(min(accs), 4),
                        "accuracy_max": round(max(accs), 4),
                        "compute_usd": round(compute, 5),
                        "labeling_usd": round(labels_usd, 2),
                        "total_usd": round(labels_usd + compute, 5),
                    }
        finally:
            server.down()
            shutil.rmtree(work / ".frugalml" / "bentoml", ignore_errors=True)
    fit = curve["fit"]
    predicted = {
        f"{b}/class": {
            "predicted": round(float(power_law(b * classes, fit["a"], fit["b"], fit["c"])), 4),
            "measured_imagenet_head": rows[f"{b}/class imagenet head"]["accuracy_median"],
            "measured_imagenet_full": rows[f"{b}/class imagenet full"]["accuracy_median"],
        }
        for b in budgets[1:]
    }
    chart(rows, Path(args.chart))
    front = [k for _, _, k in pareto([(r["total_usd"], r["accuracy_median"], k) for k, r in rows.items()])]
    print(
        json.dumps(
            {
                "setup": f"builtin:shapes, {classes} classes, {TEST_PER_CLASS} test and {VAL_PER_CLASS} val images a "
                f"class, EfficientNet-Lite0 at 64 px, 6 epochs, {args.seeds} seeds, labels at ${price}/image",
                "configs": rows,
                "pareto_front": front,
                "curve_from_smallest_budget": {"fit": fit, "head": curve["head"], "predictions": predicted},
                "chart": args.chart,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""What a backbone's frozen features are worth on builtin:shapes: a linear probe, in one run.

    .venv/bin/python benchmarks/probe.py [--sizes 64,128,224] [--arch timm/tf_efficientnet_lite0]

The project's own code end to end: the ingest stage prepares builtin:shapes (its content-hash
splits), ``frugalml.decide.labels.labeled_features`` builds the model as the train stage would
(``model.pretrained``: the pip-installed ImageNet weights, or ``none``: the same network randomly
initialised) and computes every image's pooled features through the feature cache at
``model.image_size``, and ``labels.make_head`` (standardised logistic regression, its C chosen by
3-fold accuracy on the training images) is fitted on train + val and scored on the test split.
No object store: the features stay in the run's temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR  # noqa: E402


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--arch", default="timm/tf_efficientnet_lite0")
    ap.add_argument("--starts", default="imagenet,none")
    args = ap.parse_args()
    for k in ("FRUGALML_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(k, None)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    import numpy as np

    from frugalml.core import config
    from frugalml.core.costs import CostMeter
    from frugalml.decide import labels
    from tasks import ingest

    rows = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        os.chdir(tmp)
        try:
            # a closed port: the store is "configured but down", so the feature cache stays local
            base = ["data.source=builtin:shapes", f"model.arch={args.arch}", "storage.endpoint_url=http://127.0.0.1:9"]
            Path("params.yaml").write_text("{}\n")
            with CostMeter("ingest", "probe") as m:
                ingest.run(config.load("params.yaml", base), m)
            for start in args.starts.split(","):
                for size in [int(s) for s in args.sizes.split(",")]:
                    cfg = config.load("params.yaml", [*base, f"model.pretrained={start}", f"model.image_size={size}"])
                    t0 = time.perf_counter()
                    data = labels.labeled_features(cfg)
                    fit = np.concatenate([data.split("train"), data.split("val")])
                    test = data.split("test")
                    head = labels.make_head(0, labels.choose_c(data.X[fit], data.y[fit], 0))
                    head.fit(data.X[fit], data.y[fit])
                    acc = float((head.predict(data.X[test]) == data.y[test]).mean())
                    rows.append((start, size, acc, len(fit), len(test), time.perf_counter() - t0))
                    print(f"probe: {args.arch} {start} {size} px: test accuracy {acc:.3f}", file=sys.stderr)
        finally:
            os.chdir(cwd)
    print(f"\nLinear probe on builtin:shapes, {args.arch} (logistic regression on pooled features)")
    print(f"{'start':<10} {'size':>5} {'test acc':>9} {'fit on':>7} {'test':>5} {'wall s':>7}")
    for start, size, acc, n_fit, n_test, wall in rows:
        print(f"{start:<10} {size:>5} {acc:>9.3f} {n_fit:>7} {n_test:>5} {wall:>7.1f}")


if __name__ == "__main__":
    main()

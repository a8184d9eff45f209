"""Stage evaluate: score the trained model on the test split.

Writes ``metrics/eval.json`` (accuracy, macro-F1, per-class precision/recall/F1, latency
p50/p95 at batch 1, throughput at the evaluation batch size, model size and parameter count,
the champion's scores on the same images) and the confusion matrix as ``plots/confusion.csv``
(one row per test image, for ``dvc plots show``) and ``plots/confusion.png``. The work is
``frugalml.ship.evaluation``.
"""

from __future__ import annotations

from frugalml.contracts import CONFUSION_CSV, CONFUSION_PNG, EvalReport
from frugalml.core.config import Params
from frugalml.core.costs import CostMeter
from frugalml.ship import evaluation
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> EvalReport:
    report, y_true, y_pred, classes = evaluation.evaluate(cfg)
    report.write()
    evaluation.write_confusion_csv(CONFUSION_CSV, classes, y_true, y_pred)
    evaluation.confusion_png(y_true, y_pred, classes, CONFUSION_PNG)
    evaluation.log_summary(report)
    return report


def main() -> None:
    stage_main("evaluate", run)


if __name__ == "__main__":
    main()

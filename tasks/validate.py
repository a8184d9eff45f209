"""Stage validate: a Great Expectations 1.x suite over the manifest and the prepared images.

Writes ``metrics/validation.json`` (each expectation: observed value, threshold, pass) and the
Great Expectations HTML report under ``reports/validation/``. A failed expectation ends the
stage with exit code 3 and a readable list, before any GPU time is spent. The work is
``frugalml.data.validation``.
"""

from __future__ import annotations

from frugalml.contracts import ValidationReport
from frugalml.core.config import Params
from frugalml.core.costs import CostMeter
from frugalml.core.errors import Rejected
from frugalml.data import validation
from tasks._stage import stage_main


def label_issue_ratio(cfg: Params) -> float:
    from frugalml.decide import labels  # lazy: torch, scikit-learn, cleanlab: only when the expectation is on

    return labels.issue_ratio(cfg)


def run(cfg: Params, meter: CostMeter) -> ValidationReport:
    report = validation.validate(cfg, label_issue_ratio)
    report.write()
    validation.log_summary(report)
    if not report.success:
        raise Rejected(validation.failure_message(report))
    validation.save_reference(cfg, report, meter.run_id)
    return report


def main() -> None:
    stage_main("validate", run)


if __name__ == "__main__":
    main()

"""Stage validate: a Great Expectations 1.x suite over the manifest and the prepared images.

Writes ``metrics/validation.json`` (each expectation: observed value, threshold, pass) and the
Great Expectations HTML report under ``reports/validation/``. A failed expectation ends the
stage with exit code 3 and a readable list, before any GPU time is spent. The work is
``frugalml.validation``.
"""

from __future__ import annotations

from frugalml import validation
from frugalml.config import Params
from frugalml.contracts import ValidationReport
from frugalml.costs import CostMeter
from frugalml.errors import Rejected
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> ValidationReport:
    report = validation.validate(cfg)
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

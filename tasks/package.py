"""Stage package: a BentoML model and bento for an accepted model, uploaded and registered.

Refuses a model the gate rejected (exit 3). Otherwise saves the BentoML model (classes,
architecture, image size, normalisation, metrics, gate, costs and lineage in its metadata),
builds the bento from ``frugalml/ship/serving/``, uploads it to ``bentos/<model>/<version>.bento``
and then, last, writes the version record ``registry/<model>/versions/<version>.json``.
Writes ``metrics/package.json``. The work is ``frugalml.ship.packaging``.
"""

from __future__ import annotations

from frugalml.contracts import PackageReport
from frugalml.core.config import Params
from frugalml.core.costs import CostMeter
from frugalml.ship import packaging
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> PackageReport:
    report = packaging.package(cfg, meter, meter.run_id)
    report.write()
    return report


def main() -> None:
    stage_main("package", run)


if __name__ == "__main__":
    main()

"""Stage ingest: a source of ``<class>/<image>`` files -> normalised images + manifest.

Reads ``data.source``; writes ``data/prepared/`` (shards), ``data/manifest.csv`` and
``metrics/ingest.json`` (counts and every file left out, with its reason). It never stops on
one bad file. The work is ``frugalml.data.ingestion``.
"""

from __future__ import annotations

from frugalml.contracts import IngestReport
from frugalml.core.config import Params
from frugalml.core.costs import CostMeter
from frugalml.data import ingestion
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> IngestReport:
    report = ingestion.ingest(cfg, meter)
    report.write()
    ingestion.log_summary(report)
    return report


def main() -> None:
    stage_main("ingest", run)


if __name__ == "__main__":
    main()

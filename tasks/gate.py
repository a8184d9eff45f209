"""Stage gate: compare the evaluation (and cost) metrics with ``gates.*``.

Writes ``metrics/gate.json``: every check with its value, threshold and verdict, and the
overall decision (``accept`` or ``reject``). The stage itself succeeds either way, so the
decision is recorded by DVC; the package stage refuses a rejected model. The rules are
``frugalml.ship.gates``.
"""

from __future__ import annotations

from frugalml.contracts import CostEntry, EvalReport, GateDecision, VariantsReport
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.costs import CostMeter
from frugalml.ship.gates import as_served, decide
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> GateDecision:
    train_cost = CostEntry.for_stage("train")
    served, variant = as_served(EvalReport.read(), VariantsReport.read_if_exists())
    result = decide(cfg, served, train_cost.total_usd if train_cost else 0.0, variant)
    result.write()
    info(f"gate: judging the {variant} variant (the one the package stage ships)")
    for c in result.checks:
        note = f" ({c.note})" if c.note else ""
        info(f"gate: {c.name}: {c.value:.6g} {c.op} {c.threshold}{note} -> {'pass' if c.passed else 'FAIL'}")
    info(f"gate: decision {result.decision.upper()}")
    return result


def main() -> None:
    stage_main("gate", run)


if __name__ == "__main__":
    main()

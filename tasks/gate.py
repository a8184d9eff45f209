"""Stage gate: compare the evaluation (and cost) metrics with ``gates.*``.

Writes ``metrics/gate.json``: every check with its value, threshold and verdict, and the
overall decision (``accept`` or ``reject``). The stage itself succeeds either way, so the
decision is recorded by DVC; the package stage refuses a rejected model.
"""

from __future__ import annotations

from pathlib import Path

from frugalml.config import Params
from frugalml.console import info
from frugalml.costs import CostMeter
from frugalml.fsutil import atomic_write_json, read_json
from tasks.evaluate import REPORT as EVAL_REPORT

REPORT = Path("metrics/gate.json")


def decide(cfg: Params, ev: dict) -> dict:
    g = cfg.gates
    checks = [{"name": "min_accuracy", "value": ev["accuracy"], "threshold": g.min_accuracy,
               "op": ">=", "passed": ev["accuracy"] >= g.min_accuracy}]
    if g.min_macro_f1 is not None:
        checks.append({"name": "min_macro_f1", "value": ev["macro_f1"], "threshold": g.min_macro_f1,
                       "op": ">=", "passed": ev["macro_f1"] >= g.min_macro_f1})
    failed = [c["name"] for c in checks if not c["passed"]]
    return {"decision": "reject" if failed else "accept", "failed": failed, "checks": checks}


def run(cfg: Params, meter: CostMeter) -> dict:
    result = decide(cfg, read_json(EVAL_REPORT))
    atomic_write_json(REPORT, result)
    for c in result["checks"]:
        mark = "pass" if c["passed"] else "FAIL"
        info(f"gate: {c['name']}: {c['value']:.4f} {c['op']} {c['threshold']} -> {mark}")
    info(f"gate: decision {result['decision'].upper()}")
    return result


def main() -> None:
    from tasks._stage import stage_main

    stage_main("gate", run)


if __name__ == "__main__":
    main()

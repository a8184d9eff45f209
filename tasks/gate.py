"""Stage gate: compare the evaluation (and cost) metrics with ``gates.*``.

Writes ``metrics/gate.json``: every check with its value, threshold and verdict, and the
overall decision (``accept`` or ``reject``). The stage itself succeeds either way, so the
decision is recorded by DVC; the package stage refuses a rejected model.
"""

from __future__ import annotations

from frugalml.config import Params
from frugalml.console import info
from frugalml.contracts import GATE_REPORT, CostEntry, EvalReport, GateDecision
from frugalml.costs import CostMeter

REPORT = GATE_REPORT


def serving_usd_per_1k(ev: dict, cfg: Params) -> float:
    """One replica answering one request at a time: 1000 x p50 latency of instance time."""
    return round(ev["latency_ms_p50"] / 1000 * 1000 * cfg.costs.prices.serving_usd_per_hour / 3600, 8)


def decide(cfg: Params, ev: dict, train_usd: float = 0.0) -> dict:
    g = cfg.gates
    checks = []

    def check(name, value, op, threshold, note=""):
        if threshold is None:
            return
        passed = value >= threshold if op == ">=" else value <= threshold
        checks.append(
            {
                "name": name,
                "value": value,
                "op": op,
                "threshold": threshold,
                "passed": bool(passed),
                **({"note": note} if note else {}),
            }
        )

    check("min_accuracy", ev["accuracy"], ">=", g.min_accuracy)
    check("min_macro_f1", ev["macro_f1"], ">=", g.min_macro_f1)
    if ev.get("per_class"):
        worst = min(ev["per_class"].items(), key=lambda kv: kv[1]["recall"])
        check("min_class_recall", worst[1]["recall"], ">=", g.min_class_recall, note=f"class {worst[0]}")
    champ = ev.get("champion") or {}
    if g.max_regression is not None and champ.get("comparable"):
        check(
            "max_regression",
            round(champ["accuracy"] - ev["accuracy"], 6),
            "<=",
            g.max_regression,
            note=f"accuracy drop vs champion {champ['version']}",
        )
    check("max_latency_ms_p95", ev["latency_ms_p95"], "<=", g.max_latency_ms_p95)
    check("max_model_size_mb", round(ev["model_size_bytes"] / 1e6, 3), "<=", g.max_model_size_mb)
    check("max_train_usd", round(train_usd, 6), "<=", g.max_train_usd)
    check("max_serving_usd_per_1k", serving_usd_per_1k(ev, cfg), "<=", g.max_serving_usd_per_1k)
    failed = [c["name"] for c in checks if not c["passed"]]
    return {
        "decision": "reject" if failed else "accept",
        "failed": failed,
        "checks": checks,
        "serving_usd_per_1k": serving_usd_per_1k(ev, cfg),
        "train_usd": round(train_usd, 6),
        "champion": champ.get("version"),
    }


def run(cfg: Params, meter: CostMeter) -> GateDecision:
    train_cost = CostEntry.for_stage("train")
    ev = EvalReport.read().model_dump(mode="json")  # decide() takes a dict: tests give it partial reports
    result = GateDecision.model_validate(decide(cfg, ev, train_cost.total_usd if train_cost else 0.0))
    result.write()
    for c in result.checks:
        note = f" ({c.note})" if c.note else ""
        info(f"gate: {c.name}: {c.value:.6g} {c.op} {c.threshold}{note} -> {'pass' if c.passed else 'FAIL'}")
    info(f"gate: decision {result.decision.upper()}")
    return result


def main() -> None:
    from tasks._stage import stage_main

    stage_main("gate", run)


if __name__ == "__main__":
    main()

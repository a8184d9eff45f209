"""Quality, speed and cost gates: ``decide(cfg, eval report, train $)`` -> a ``GateDecision``.

Every configured check is listed with its value, threshold and verdict; a gate set to null in
``gates.*`` is not checked. The package stage refuses a rejected model.
"""

from __future__ import annotations

from frugalml.contracts import EvalReport, GateCheck, GateDecision, VariantsReport
from frugalml.core.config import Params


def serving_usd_per_1k(latency_ms_p50: float, cfg: Params) -> float:
    """One replica answering one request at a time: 1000 x p50 latency of instance time."""
    return round(latency_ms_p50 / 1000 * 1000 * cfg.costs.prices.serving_usd_per_hour / 3600, 8)


def as_served(ev: EvalReport, variants: VariantsReport | None) -> tuple[EvalReport, str]:
    """The evaluation as the chosen variant would serve: its accuracy, macro-F1, latency and size
    (the per-class figures stay the fp32 model's)."""
    if variants is None or variants.chosen == "fp32":
        return ev, "fp32"
    v = variants.chosen_score()
    served = ev.model_copy(
        update={
            "accuracy": v.accuracy,
            "macro_f1": v.macro_f1,
            "latency_ms_p50": v.latency_ms_p50,
            "latency_ms_p95": v.latency_ms_p95,
            "model_size_bytes": v.size_bytes,
        }
    )
    return served, v.name


def decide(cfg: Params, ev: EvalReport, train_usd: float = 0.0, variant: str = "fp32") -> GateDecision:
    g = cfg.gates
    checks: list[GateCheck] = []

    def check(name: str, value: float, op: str, threshold: float | None, note: str | None = None) -> None:
        if threshold is not None:
            passed = value >= threshold if op == ">=" else value <= threshold
            checks.append(GateCheck(name=name, value=value, op=op, threshold=threshold, passed=passed, note=note))

    check("min_accuracy", ev.accuracy, ">=", g.min_accuracy)
    check("min_macro_f1", ev.macro_f1, ">=", g.min_macro_f1)
    if ev.per_class:
        worst = min(ev.per_class.items(), key=lambda kv: kv[1].recall)
        check("min_class_recall", worst[1].recall, ">=", g.min_class_recall, note=f"class {worst[0]}")
    champ = ev.champion
    if g.max_regression is not None and champ is not None and champ.comparable:
        drop = round(champ.accuracy - ev.accuracy, 6)
        check("max_regression", drop, "<=", g.max_regression, note=f"accuracy drop vs champion {champ.version}")
    check("max_latency_ms_p95", ev.latency_ms_p95, "<=", g.max_latency_ms_p95)
    check("max_model_size_mb", round(ev.model_size_bytes / 1e6, 3), "<=", g.max_model_size_mb)
    check("max_train_usd", round(train_usd, 6), "<=", g.max_train_usd)
    serving = serving_usd_per_1k(ev.latency_ms_p50, cfg)
    check("max_serving_usd_per_1k", serving, "<=", g.max_serving_usd_per_1k)
    failed = [c.name for c in checks if not c.passed]
    return GateDecision(
        decision="reject" if failed else "accept",
        failed=failed,
        checks=checks,
        serving_usd_per_1k=serving,
        train_usd=round(train_usd, 6),
        champion=champ.version if champ else None,
        variant=variant,
    )

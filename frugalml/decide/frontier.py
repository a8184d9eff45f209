"""What a sweep's trials come to (pure): the Pareto front (quality up, $ down), the recommendation
(the cheapest trial that passes every gate), and the closest miss of each gate none passes."""

from __future__ import annotations

from frugalml.contracts import (
    GateCheck,
    SweepTrial,
)


def pareto_front(trials: list[SweepTrial], objective: str = "accuracy") -> list[int]:
    """Trial numbers not dominated in (``objective`` up, USD down) among trials that have a score."""
    scored = [t for t in trials if t.score(objective) is not None]
    front = []
    for t in scored:
        q = t.score(objective)
        dominated = any(
            o.score(objective) >= q and o.usd <= t.usd and (o.score(objective) > q or o.usd < t.usd) for o in scored
        )
        if not dominated:
            front.append(t.number)
    return sorted(front, key=lambda n: next(t.usd for t in scored if t.number == n))


def recommend(trials: list[SweepTrial], objective: str = "accuracy") -> int | None:
    """The cheapest trial whose gate decision accepts (ties: the higher ``objective``), among those
    that ran all their epochs (or stopped early by ``train.early_stopping``, which the settings
    reproduce): a trial stopped by its budget or the pruner was cheaper than `frontier --apply`
    then `frugalml run` would be, which trains every epoch."""
    ok = [
        t
        for t in trials
        if t.gate is not None
        and t.gate.decision == "accept"
        and t.state == "complete"
        and t.stopped in (None, "completed", "early_stopping")
    ]
    if not ok:
        return None
    return min(ok, key=lambda t: (t.usd, -(t.score(objective) or 0.0))).number


def closest_misses(trials: list[SweepTrial]) -> list[tuple[GateCheck, SweepTrial]]:
    """When no trial passes every gate: for each gate that some trial failed, the check of the
    trial that came closest to it (highest value of a ``>=`` gate, lowest of a ``<=`` one), in
    the order the gates are checked. What the sweep says instead of a recommendation."""
    best: dict[str, tuple[GateCheck, SweepTrial]] = {}
    for t in trials:
        if t.gate is None or t.state == "failed":
            continue
        for c in t.gate.checks:
            if c.name not in best:
                best[c.name] = (c, t)
                continue
            held = best[c.name][0].value
            if (c.value > held) if c.op == ">=" else (c.value < held):
                best[c.name] = (c, t)
    return [(c, t) for c, t in best.values() if not c.passed]

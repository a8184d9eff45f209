"""The sweep record as Prefect artifacts: what a team sees on its Prefect server after a sweep.

``frugalml sweep`` runs its trials as DVC experiments, outside Prefect; when it ends and
``PREFECT_API_URL`` names a server, ``publish_sweep`` (a one-task flow run, because Prefect
attaches artifacts to runs) leaves there a table of the trials (``sweep-<id>``) and the
recommendation (``sweep-<id>-recommendation``). Without a server nothing is published: a
temporary one would take the artifacts with it when it stops; the record is in the bucket.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from frugalml.contracts import SweepRecord


def artifact_key(sweep_id: str) -> str:
    return "sweep-" + "".join(c if c.isalnum() else "-" for c in sweep_id.lower())


def trial_rows(record: SweepRecord) -> list[dict]:
    rows = []
    for t in record.trials:
        mark = "recommended" if t.number == record.recommended else ("front" if t.number in record.front else "")
        rows.append(
            {
                "trial": t.number + 1,
                "experiment": t.experiment,
                "settings": " ".join(t.overrides),
                "state": t.state,
                "accuracy": t.accuracy,
                "macro_f1": t.macro_f1,
                "usd": t.usd,
                "gate": t.gate.decision if t.gate else None,
                "mark": mark,
            }
        )
    return rows


def recommendation_markdown(record: SweepRecord) -> str:
    head = (
        f"# Sweep {record.id}: {record.status}\n\n{len(record.trials)} trials, "
        f"${record.spent_usd:.5f} of ${record.budget_usd:g}.\n\n"
    )
    rec = next((t for t in record.trials if t.number == record.recommended), None)
    if rec is None:
        return head + "**No trial passes every gate**: widen `sweep.space` or relax `gates.*`.\n"
    return head + (
        f"**Recommended: trial {rec.number + 1}** (`{rec.experiment}`), the cheapest that passes every gate: "
        f"{record.objective} {rec.score(record.objective):.4f} for ${rec.usd:.5f}.\n\n"
        f"`frugalml frontier --sweep {record.id} --apply` writes `{' '.join(rec.overrides)}` to params.yaml.\n"
    )


@flow(name="frugalml-sweep-record", log_prints=False)
def publish_sweep(record: dict) -> str:
    rec = SweepRecord.model_validate(record)
    key = artifact_key(rec.id)
    create_table_artifact(trial_rows(rec), key=key, description=f"frugalml sweep {rec.id}: every trial")
    create_markdown_artifact(recommendation_markdown(rec), key=f"{key}-recommendation")
    return key

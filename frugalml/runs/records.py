"""Run records: ``runs/<run_id>/`` in the bucket, with ``record.json`` written last.

A run record holds the params, the overrides, dvc.lock, metrics, the cost ledger, the gate
decision, the git commit, the flow run id and the status. Readers look for ``record.json``;
a run without it was interrupted before it finished writing and is not listed.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pydantic import ValidationError

from frugalml.contracts import STAGES, RunRecord, is_safe_id, safe_id  # noqa: F401 (STAGES re-exported for the flow)
from frugalml.core.errors import DataError
from frugalml.core.store import Store


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def write_record(store: Store, run_id: str, record: RunRecord, files: list[Path], root: Path = Path(".")) -> str:
    """Upload the run's files, then ``record.json`` (the commit point)."""
    base = f"runs/{run_id}/"
    uploaded = []
    for f in files:
        p = root / f
        if p.is_file():
            store.put_file(base + f.as_posix(), p)
            uploaded.append(f.as_posix())
    # create-only and idempotent: a resent PUT or a retried task finds its own record
    body = record.model_copy(update={"files": uploaded}).model_dump(mode="json", exclude_none=True)
    store.put_json_once(base + "record.json", body, write_id=f"record-{run_id}")
    return store.uri(base + "record.json")


def list_runs(store: Store) -> list[str]:
    """The run ids with a record in the bucket (a folder whose name is not an id is not a run)."""
    keys = [o["key"].split("/") for o in store.list("runs/") if o["key"].endswith("/record.json")]
    return sorted({k[1] for k in keys if len(k) == 3 and is_safe_id(k[1])})


def get_record(store: Store, run_id: str) -> RunRecord:
    safe_id(run_id, "a run id", "20261204T151018Z-4e1f2a")  # it names keys here, folders in `reproduce`
    try:
        return RunRecord.model_validate(store.get_json(f"runs/{run_id}/record.json"))
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise DataError(f"run record {run_id} is not a valid RunRecord ({fields})") from None


def recent_records(store: Store | None, last: int = 10) -> list[RunRecord]:
    """The last ``last`` run records, oldest first (none without a store). A record that cannot be
    read (written by another tool, or damaged) is left out: it is a basis for nothing."""
    from frugalml.core.errors import FrugalError

    if store is None:
        return []
    out = []
    for rid in list_runs(store)[-last:]:
        try:
            out.append(get_record(store, rid))
        except FrugalError:
            continue
    return out

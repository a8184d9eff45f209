"""The shell every stage runs in: load params, meter cost, turn errors into exit codes.

``python -m tasks.<stage>`` (what dvc.yaml calls) ends in ``stage_main``. The cost ledger
entry is written to ``costs/<stage>.json``; a failure is also written to
``.frugalml/status/<stage>.json`` so the Prefect flow can tell a rejection (exit 3) from a
fault without parsing DVC's output. A stage that succeeds also writes its headline figures
(``metrics/headline/<stage>.json``) and refreshes ``metrics/costs.json``: what ``dvc exp show``
lists.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable

from frugalml.contracts import Contract, CostEntry, CostMetrics, StageStatus, cost_file, headline_file, status_file
from frugalml.core import config
from frugalml.core.config import Params
from frugalml.core.console import err, fast_exit
from frugalml.core.costs import CostMeter, price
from frugalml.core.errors import FrugalError
from frugalml.core.fsutil import atomic_write_json


def run_id() -> str:
    return os.environ.get("FRUGALML_RUN_ID") or time.strftime("manual-%Y%m%dT%H%M%SZ", time.gmtime())


def stage_main(stage: str, run: Callable[[Params, CostMeter], object]) -> None:
    status_file(stage).unlink(missing_ok=True)
    headline_file(stage).unlink(missing_ok=True)
    code, message, transient = 0, "", False
    cfg = meter = report = None
    try:
        cfg = config.load()
        with CostMeter(stage, run_id(), count_startup=True) as meter:
            report = run(cfg, meter)
    except FrugalError as exc:
        code, message = exc.exit_code, str(exc)
        transient = exc.transient
        label = "REJECTED" if code == 3 else "ERROR"
        err.print(f"[bold red]{stage}: {label}[/bold red] {message}")
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    except Exception as exc:  # a bug: show where, so it can be reported
        code, message = 1, f"unexpected {exc.__class__.__name__}: {exc}"
        traceback.print_exc()
    if cfg is not None and meter is not None and meter.entry:
        # Written on failure too: a rejected or failed stage still cost money.
        capacity = cfg.train.capacity if stage == "train" else "on_demand"
        priced = price(meter.entry, cfg.costs, capacity)
        entry = CostEntry.model_validate({**meter.entry, **priced, "capacity": capacity, "exit_code": code})
        entry.write(cost_file(stage))
        err.print(
            f"[dim]{stage}: {entry.wall_s:.1f} s wall, {entry.cpu_s:.1f} s CPU, "
            f"{entry.peak_rss_mb:.0f} MB peak RSS, ${entry.total_usd:.5f}[/dim]"
        )
        CostMetrics.from_ledgers().write()
    if code == 0 and isinstance(report, Contract):
        atomic_write_json(headline_file(stage), report.headline())
    if code:
        StageStatus(stage=stage, exit_code=code, message=message, transient=transient).write(status_file(stage))
    fast_exit(code)  # skips about 1 s of teardown with torch loaded

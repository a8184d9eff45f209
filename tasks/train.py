"""Stage train: fine-tune a torchvision backbone on the prepared images.

Writes ``models/model.pt`` (weights + everything needed to serve them), ``metrics/train.json``
and the learning curves in ``plots/train.csv``. The stage's work is ``frugalml.model.training``
(the epochs: ``frugalml.model.loop``).

* Pretrained start (``model.pretrained``): ``none``, ``torchvision`` (hub cache, team mirror or
  download: ``frugalml.model.weights``; file and sha256 in the report's ``pretrained``) or
  ``registry:<model>@<alias or version>`` (warm start; the head is re-initialised when the
  classes changed).
* Fine-tuning: ``head``, ``last_n`` blocks or ``full``; the head and the backbone get their
  own learning rates.
* Determinism: with ``train.seed`` fixed, CPU training is bitwise reproducible.
* Resume: a checkpoint after every epoch (locally, and under ``checkpoints/<run_id>/`` in S3).
  A restarted stage with the same inputs resumes from it and ends with the same weights.
* ``train.distributed.nproc_per_node > 1`` relaunches the stage under ``torchrun`` (DDP:
  gloo on CPU, nccl on GPU); rank 0 writes the outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from frugalml.contracts import Pretrained, TrainReport
from frugalml.core import config
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.costs import CostMeter
from frugalml.core.errors import FrugalError
from frugalml.model import parts, training
from tasks._stage import run_id, stage_main

STARTED_ENV = "FRUGALML_STAGE_STARTED"  # the stage's start, for the DDP workers' budget


def _launch_torchrun(cfg: Params, started: float) -> None:
    n = cfg.train.distributed.nproc_per_node
    info(f"train: launching {n} processes with torchrun (DDP)")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "tasks.train",
        "--ddp-worker",
    ]
    # torchrun's log folders (torchelastic_*) go in the system temp folder and stay there: give
    # it one of ours, removed afterwards
    with tempfile.TemporaryDirectory(prefix="frugalml-torchrun-") as tmp:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            STARTED_ENV: repr(started),
            "TMPDIR": tmp,
        }
        code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise FrugalError(f"distributed training failed (torchrun exit code {code}); see the log above")


def train(cfg: Params, meter: CostMeter | None, run_id: str, started: float | None = None) -> TrainReport | None:
    report = training.train(cfg, meter, run_id, started)
    if report is not None:  # rank 0
        report.write()
    return report


def run(cfg: Params, meter: CostMeter) -> TrainReport | None:
    if cfg.train.distributed.nproc_per_node > 1:
        found = training.resolve_pretrained(cfg, meter)  # once, here: the workers then read the local cache
        _launch_torchrun(
            cfg, time.time() - meter.elapsed_s()
        )  # the workers' CPU time is counted: they are this process's children
        report = TrainReport.read()
        if found is not None:
            report.pretrained = Pretrained(**found.lineage())
            report.write()
        meter.add(gpu_s=report.gpu_s, image_epochs=report.train_images * report.epochs_run)
        meter.extra["stopped"] = report.stopped
        return report
    return train(cfg, meter, meter.run_id)


def main() -> None:
    if "--ddp-worker" in sys.argv:
        try:
            train(config.load(), None, run_id(), float(os.environ[STARTED_ENV]))
        except FrugalError as exc:
            print(f"train (rank {parts.rank()}): {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        return
    stage_main("train", run)


if __name__ == "__main__":
    main()

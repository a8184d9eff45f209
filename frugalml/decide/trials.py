"""One trial of a sweep: a DVC experiment (``dvc exp run --temp``) in its own process group, its
reports read from the experiment's commit, billed as its stages are plus DVC's time around them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from frugalml.contracts import (
    STAGES,
    CostEntry,
    EvalReport,
    SweepTrial,
    TrainReport,
    cost_file,
)
from frugalml.core import config
from frugalml.core.config import Params
from frugalml.core.costs import price
from frugalml.core.errors import StorageError
from frugalml.core.fsutil import atomic_write_json, read_json
from frugalml.core.procs import ProcessRecord, dvc_env, thread_env
from frugalml.core.store import resolve_settings, settings_env
from frugalml.decide import lanes
from frugalml.model.trial import ENV as TRIAL_ENV
from frugalml.ship.gates import decide

TARGET = "evaluate"  # the stages a trial runs: train and evaluate (and whatever changed before them)


CARRIED = ("dvc.lock", "metrics", "costs", "reports", "plots")  # untracked files a trial starts from


RUNNING: set[int] = set()  # process groups of the trials running now (killed when the sweep stops)


# What a trial's DVC experiment spends around its stages (dvc exp run's checks, the stages' process
# start-ups besides their own clock): 6-12 s on 2 cores. Only the estimate held back before the first
# trial finishes; from then on the sweep uses the overhead it saw (Sweep._overhead).
DVC_TRIAL_S = 10.0


def _run_group(cmd: list[str], env: dict, pidfile: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, recorded in ``pidfile``. If the sweep is
    interrupted (Ctrl-C, SIGTERM) the whole group goes too: DVC and the stage it runs (see
    ``stop_running``); if the sweep is killed outright, ``--resume`` finds the group in
    ``pidfile`` and stops it."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=cwd
    )
    RUNNING.add(proc.pid)
    record = ProcessRecord.of(proc.pid)
    for _ in range(50):  # /proc may lag the new process a moment on a busy machine: without the
        if record is not None:  # record, a killed sweep's --resume could not stop this trial
            break
        time.sleep(0.01)
        record = ProcessRecord.of(proc.pid)
    if record is not None:
        atomic_write_json(pidfile, record.as_dict())
    try:
        out, errs = proc.communicate()
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        RUNNING.discard(proc.pid)
        pidfile.unlink(missing_ok=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, errs)


def stop_running() -> None:
    """Stop every trial's process group (the sweep is being interrupted)."""
    for pgid in list(RUNNING):
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_orphaned_trial(pidfile: Path) -> bool:
    """A sweep killed outright leaves its running trial behind: stop that process group, if the
    recorded leader is still the very process it started (same boot, start time, program)."""
    try:
        record = ProcessRecord.from_dict(read_json(pidfile))
    except (OSError, ValueError):
        return False
    pidfile.unlink(missing_ok=True)
    if record is None or not record.matches():
        return False
    _kill_group(record.pid)
    return True


def _git_show(ref: str, path: str, cwd: Path | None = None) -> str | None:
    res = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True, cwd=cwd)
    return res.stdout if res.returncode == 0 else None


def _exp_ref(name: str, cwd: Path | None = None) -> str | None:
    res = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], capture_output=True, text=True, cwd=cwd
    )
    return next((r for r in res.stdout.split() if r.endswith("/" + name)), None)


def _store_env(cfg: Params) -> dict[str, str]:
    """A trial runs in DVC's temporary copy of the workspace, without ``.frugalml/`` (where the
    embedded server's address and key are): it gets them from the environment instead."""
    try:
        return settings_env(resolve_settings(cfg.storage))
    except StorageError:
        return {}  # no store: the stages say so themselves if they need one


def trial_threads(cfg: Params) -> int | None:
    """Torch CPU threads for each trial when ``sweep.parallel`` trials run side by side: the cores
    split between them (``procs.thread_env``; None: torch's default). An explicit
    ``train.num_threads`` or ``OMP_NUM_THREADS`` is kept."""
    if cfg.sweep.parallel <= 1 or cfg.train.num_threads or os.environ.get("OMP_NUM_THREADS"):
        return None
    return int(thread_env(cfg.sweep.parallel)["OMP_NUM_THREADS"])


def trial_vcpus(cfg: Params) -> float | None:
    """The vCPUs each trial is billed at when ``sweep.parallel`` trials share the machine: its
    share (``costs.vcpus``, or the cores, / parallel). Each billed at the whole machine, two trials
    side by side would bill the sweep twice for the same machine-hours. None: one at a time."""
    if cfg.sweep.parallel <= 1:
        return None
    return (cfg.costs.vcpus or os.cpu_count() or 1) / cfg.sweep.parallel


def run_trial(
    cfg: Params, number: int, experiment: str, overrides: list[str], link: dict, pidfile: Path, lane: Path | None = None
) -> SweepTrial:
    """``dvc exp run --temp`` for one trial (in the workspace, or in a lane when trials run side
    by side), then its reports read from the experiment's commit."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", experiment]
    costs = cfg.costs
    if (share := trial_vcpus(cfg)) is not None:  # its stages' meters bill the same share
        overrides = [*overrides, f"costs.vcpus={share:g}"]
        costs = costs.model_copy(update={"vcpus": share})
    for path in CARRIED:  # what `dvc repro validate` left that git does not track: without it, every
        if Path(lane or ".", path).exists():  # trial would prepare and validate the data again (and pay)
            cmd += ["--copy-paths", path]
    for o in overrides:
        cmd += ["-S", o]
    cmd.append(TARGET)
    env = dvc_env({**_store_env(cfg), TRIAL_ENV: json.dumps(link), "FRUGALML_RUN_ID": experiment})
    if trial_threads(cfg) is not None:
        env.update(thread_env(cfg.sweep.parallel))
    started, t0 = time.time(), time.perf_counter()
    res = _run_group(cmd, env, pidfile, cwd=lane)
    wall = time.perf_counter() - t0
    usd = price({"wall_s": wall}, costs)["total_usd"]
    trial = SweepTrial(
        number=number,
        experiment=experiment,
        overrides=overrides,
        state="failed",
        usd=usd,
        wall_s=wall,
        started_at=round(started, 3),
    )
    ref = _exp_ref(experiment, lane) if res.returncode == 0 else None
    if ref is None:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        trial.message = f"dvc exp run exited {res.returncode}: " + " | ".join(tail)
        return trial
    if lane is not None:
        lanes.publish(lane, ref)  # the workspace's `dvc exp show` lists it, `dvc exp apply` takes it
    ev = EvalReport.model_validate_json(_git_show(ref, str(EvalReport.PATH), lane) or "{}")
    tr = TrainReport.model_validate_json(_git_show(ref, str(TrainReport.PATH), lane) or "{}")
    cost = CostEntry.model_validate_json(_git_show(ref, str(cost_file("train")), lane) or "{}")
    texts = [_git_show(ref, str(cost_file(st)), lane) for st in STAGES]  # the stages that ever ran here
    entries = [CostEntry.model_validate_json(t) for t in texts if t]
    trial.usd = trial_usd(wall, [e for e in entries if e.run_id == experiment], costs)
    trial_cfg = config.validate(config.apply_overrides(config.dump(cfg), overrides))
    trial.state = "pruned" if tr.stopped == "pruned" else "complete"
    trial.accuracy, trial.macro_f1 = ev.accuracy, ev.macro_f1
    trial.latency_ms_p50, trial.latency_ms_p95 = ev.latency_ms_p50, ev.latency_ms_p95
    trial.model_size_bytes, trial.epochs_run, trial.stopped = ev.model_size_bytes, tr.epochs_run, tr.stopped
    trial.train_usd = cost.total_usd
    trial.gate = decide(trial_cfg, ev, cost.total_usd)
    return trial


def trial_usd(wall_s: float, ran: list[CostEntry], costs) -> float:
    """A trial billed as its stages are: each stage that ran in it (its cost entry: vCPU and GPU
    time at the capacity's rates, S3 requests) plus the rest of the trial's wall (DVC, start-ups)
    at the on-demand vCPU rate. Billing the whole wall at the vCPU rate left out the GPU (a sweep
    on a GPU recorded a fraction of its spend) and spot prices."""
    stage_wall = sum(e.wall_s for e in ran)
    rest = price({"wall_s": max(0.0, wall_s - stage_wall)}, costs)["total_usd"]
    return round(rest + sum(e.total_usd - e.labeling_usd for e in ran), 6)

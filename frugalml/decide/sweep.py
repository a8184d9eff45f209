"""``frugalml sweep``: search the settings for the cheapest model that meets the gates.

An Optuna study with two objectives (test accuracy, or macro-F1 with ``sweep.objective``, up;
trial USD down) samples settings from
``sweep.space``. Each trial is a DVC experiment run outside the workspace
(``dvc exp run --temp --name <sweep>-t<N> -S key=value ... evaluate``): the real train and
evaluate stages with their real cost meters, listed afterwards by ``dvc exp show`` and applied
with ``dvc exp apply``. The train stage reports each epoch's validation accuracy to a companion
single-objective study whose pruner (Hyperband or successive halving) stops trials that trail
the others; a pruned trial still evaluates the model it has, and is billed. Every trial is billed
at its whole wall time (DVC's checks and both stages' start-ups included) at the price sheet.

The studies live in SQLite under ``.frugalml/sweeps/<id>/``, so a killed sweep continues with
``--resume``: finished trials are kept (and billed once), the one that was running is marked
interrupted. Ctrl-C or SIGTERM stops the running trials at once and bills them for the time they
ran; after SIGKILL that time is not known. The record (trials, spend, the Pareto front, the
recommendation) is written after every trial, locally and to ``sweeps/<id>/record.json`` in the
bucket.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from frugalml.contracts import (
    STAGES,
    SWEEPS,
    CostEntry,
    EvalReport,
    GateCheck,
    SweepRecord,
    SweepTrial,
    TrainReport,
    cost_file,
)
from frugalml.core import config
from frugalml.core.config import Params, Range
from frugalml.core.console import info
from frugalml.core.costs import price
from frugalml.core.errors import ConfigError, FrugalError, StorageError
from frugalml.core.fsutil import atomic_write_json, read_json
from frugalml.core.procs import ProcessRecord, dvc_env, thread_env
from frugalml.core.store import Store, resolve_settings, settings_env
from frugalml.decide import lanes
from frugalml.model.trial import ENV as TRIAL_ENV
from frugalml.model.trial import make_pruner, open_storage
from frugalml.ship.gates import decide

TARGET = "evaluate"  # the stages a trial runs: train and evaluate (and whatever changed before them)
CARRIED = ("dvc.lock", "metrics", "costs", "reports", "plots")  # untracked files a trial starts from


# -- the search space ---------------------------------------------------------------------------
def check_space(cfg: Params) -> dict[str, list | Range]:
    """The space, validated: every key a params key, every choice valid there. One line per problem."""
    space = cfg.sweep.space
    if not space:
        raise ConfigError("sweep.space is empty: give at least one key with choices, e.g. model.arch: [resnet18]")
    base = config.dump(cfg)
    for key, values in space.items():
        if key.split(".")[0] in ("sweep", "storage", "costs", "data"):
            raise ConfigError(f"sweep.space.{key}: only model, train, evaluate and gates settings can be searched")
        if isinstance(values, list) and not values:
            raise ConfigError(f"sweep.space.{key}: an empty list of choices")
        probes = values if isinstance(values, list) else [values.low, values.high]
        for v in probes:
            try:
                config.validate(config.apply_overrides(base, [f"{key}={json.dumps(v)}"]), "params.yaml")
            except ConfigError as exc:
                detail = str(exc).splitlines()[-1].strip(" -")
                raise ConfigError(f"sweep.space.{key}: {v!r} is not a valid value ({detail})") from None
    return space


def suggest(trial, space: dict[str, list | Range]) -> list[str]:
    """The trial's settings as KEY=VALUE overrides (Optuna records the choices in the study)."""
    out = []
    for key, values in space.items():
        try:
            if isinstance(values, list):
                value = trial.suggest_categorical(key, values)
            elif values.int_:
                value = trial.suggest_int(key, int(values.low), int(values.high), log=values.log)
            else:
                value = trial.suggest_float(key, values.low, values.high, log=values.log)
        except ValueError as exc:  # Optuna: the study recorded another space for this key
            raise ConfigError(
                f"sweep.space.{key} is not what this sweep started with ({exc}); --resume continues a sweep "
                "over the same space: run a new sweep (without --resume) to search the edited one"
            ) from None
        out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def grid(space: dict[str, list | Range]) -> dict[str, list]:
    if any(not isinstance(v, list) for v in space.values()):
        raise ConfigError("sweep.sampler: grid needs a list of choices for every key (no ranges)")
    return {k: list(v) for k, v in space.items()}


def grid_size(space: dict[str, list | Range]) -> int:
    return len(list(itertools.product(*grid(space).values())))


FINISHED = ("complete", "pruned")  # trial states with a result that stands


def ran_before(trials: list[SweepTrial], overrides: list[str]) -> SweepTrial | None:
    """The finished trial (complete or pruned) with exactly these settings: a sampler may propose
    a setting again (TPE did for 3 of 10 trials on the default 16-setting space), and running it
    again buys nothing but a second bill. Failed trials do not count: a failure may not recur."""
    return next((t for t in trials if t.overrides == overrides and t.state in FINISHED), None)


# -- the Pareto front and the recommendation (pure) -----------------------------------------------
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


# -- one trial: a DVC experiment ------------------------------------------------------------------
RUNNING: set[int] = set()  # process groups of the trials running now (killed when the sweep stops)
# What a trial's DVC experiment spends around its stages (dvc exp run's checks, the stages' process
# start-ups besides their own clock): 6-12 s on 2 cores. Only the estimate held back before the first
# trial finishes; from then on the sweep uses the overhead it saw (Sweep._overhead).
DVC_TRIAL_S = 10.0
MAX_REPEATS_IN_A_ROW = 200  # proposals of settings that ran already before the sweep stops (ms each)


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


# -- the sweep ------------------------------------------------------------------------------------
def new_id() -> str:
    return time.strftime("s%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]


def latest_id() -> str | None:
    ids = sorted(p.parent.name for p in SWEEPS.glob("*/record.json"))
    return ids[-1] if ids else None


class Sweep:
    """One sweep: its two Optuna studies (in SQLite), its record, and the loop over trials."""

    def __init__(
        self,
        cfg: Params,
        sweep_id: str,
        base_overrides: list[str],
        resume: bool,
        overhead_usd: float = 0.0,
        prep: list[CostEntry] = (),
    ):
        """``overhead_usd``: what a trial is estimated to cost besides its train stage (evaluation,
        DVC, start-ups), held back from the train budget of the trials that start before any has
        finished (see ``_overhead``). ``prep``: the cost entries of the stages that prepared the
        data for this sweep (or this resume of it), billed to its record."""
        import optuna  # lazy: Optuna loads SQLAlchemy (about a second)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.cfg, self.id = optuna, cfg, sweep_id
        self.overhead_reserve = overhead_usd
        self.space = check_space(cfg)
        s = cfg.sweep
        folder = SweepRecord.path(sweep_id).parent.resolve()  # a bad id is refused here
        folder.mkdir(parents=True, exist_ok=True)
        self.storage = f"sqlite:///{folder / 'study.db'}"
        self.pidfile = folder / "trial.pid"  # the running trial's process group
        sampler = self._sampler()
        self.study = optuna.create_study(
            study_name=sweep_id,
            storage=open_storage(self.storage),
            directions=["maximize", "minimize"],
            sampler=sampler,
            load_if_exists=resume,
        )
        self.prune_study = optuna.create_study(
            study_name=f"{sweep_id}-prune",
            storage=open_storage(self.storage),
            direction="maximize",
            pruner=self._pruner(),
            load_if_exists=resume,
        )
        if s.sampler == "grid" and not resume:
            # Optuna's GridSampler stops the study from inside tell(), which ask-and-tell does not
            # allow; enqueued trials give the same grid, kept in the storage for --resume.
            for combo in itertools.product(*grid(self.space).values()):
                self.study.enqueue_trial(dict(zip(self.space, combo)))
        self._lock, self._stopping = threading.Lock(), False
        self._repeats_in_a_row = 0
        self._in_flight = 0  # trials started and not yet recorded
        if resume:
            for pidfile in folder.glob("trial*.pid"):  # one per lane when trials ran side by side
                if stop_orphaned_trial(pidfile):
                    info(f"sweep: stopped a trial the killed sweep left running ({pidfile.name})")
            self.record = SweepRecord.read(sweep_id)
            self.record.status = "running"
            self._close_interrupted()
        else:
            self.record = SweepRecord(
                id=sweep_id,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                status="running",
                space={k: (v if isinstance(v, list) else v.model_dump(by_alias=True)) for k, v in self.space.items()},
                budget_usd=s.budget_usd,
                objective=s.objective,
                max_trials=s.max_trials,
                base_overrides=base_overrides,
            )
        for entry in prep:
            self.record.prep_usd = round(self.record.prep_usd + entry.total_usd - entry.labeling_usd, 6)
            self.record.prep_labeling_usd = round(self.record.prep_labeling_usd + entry.labeling_usd, 6)
        self.store = Store.optional(cfg.storage, tolerate_transient=True)

    def _sampler(self):
        s, o = self.cfg.sweep, self.optuna
        if s.sampler == "grid":  # every combination enqueued once (see _enqueue_grid), in order
            return o.samplers.RandomSampler(seed=s.seed)
        if s.sampler == "random":
            return o.samplers.RandomSampler(seed=s.seed)
        with warnings.catch_warnings():  # multivariate TPE is "experimental" since Optuna 2.2: said on every sweep
            warnings.simplefilter("ignore", o.exceptions.ExperimentalWarning)
            return o.samplers.TPESampler(seed=s.seed, multivariate=True)

    def _pruner(self):
        return make_pruner(self.cfg.sweep.pruner, self._max_epochs())

    def _max_epochs(self) -> int:
        return max(self._epoch_choices() or [self.cfg.train.epochs])

    def _epoch_choices(self) -> list[int]:
        v = self.space.get("train.epochs")
        if isinstance(v, list):
            return [int(x) for x in v]
        return [int(v.high)] if v is not None else []

    def _close_interrupted(self) -> None:
        """Trials that were running when the sweep was killed: not finished, not billed twice."""
        done = {t.number for t in self.record.trials}
        for study in (self.study, self.prune_study):
            for t in study.get_trials(deepcopy=False, states=[self.optuna.trial.TrialState.RUNNING]):
                study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)
                if study is self.study and t.number not in done:
                    self.record.trials.append(
                        SweepTrial(
                            number=t.number,
                            experiment=f"{self.id}-t{t.number}",
                            overrides=[],
                            state="interrupted",
                            message="the sweep was stopped while this trial ran; its spend is not known",
                        )
                    )

    @property
    def spent(self) -> float:
        """Compute so far: the data preparation, the screen and every trial (pruned and failed ones too)."""
        r = self.record
        return round(r.prep_usd + r.screen_usd + sum(t.usd for t in r.trials), 6)

    def run(self, progress: Callable[[str], None] = info) -> SweepRecord:
        try:
            self._screen(progress)
            self._loop(progress)
        except KeyboardInterrupt:  # the loop has stopped the running trials and recorded them
            self.record.status = "interrupted"
            with self._lock:
                self._save()
            progress(f"sweep: interrupted; `frugalml sweep --resume {self.id}` continues it")
            raise
        finally:
            if self.cfg.sweep.parallel > 1:
                lanes.remove_lanes(self.id)
        self._save()
        return self.record

    def _screen(self, progress: Callable[[str], None]) -> None:
        """``sweep.screen``: score each start's head on its cached features, then queue the best
        start's deeper fine-tunings as the first trials (see ``frugalml.decide.screen``). Once per sweep:
        a resumed sweep keeps its screen and its queue."""
        from frugalml.decide import screen

        why = screen.why_not(self.cfg, self.space)
        if why is not None or self.record.screen or self.record.trials:
            return
        n = len(screen.starts(self.space))
        progress(f"sweep: screening {n} starts: the head alone on each one's cached features (sweep.screen)")
        t0 = time.perf_counter()
        results = screen.screen(self.cfg, self.space, self.cfg.sweep.budget_usd - self.spent, progress)
        wall = time.perf_counter() - t0  # the starts and what is around them (loading torch, the manifest)
        self.record.screen = results
        self.record.screen_usd = round(price({"wall_s": wall}, self.cfg.costs, self.cfg.train.capacity)["total_usd"], 6)
        best = screen.best_start(self.space, results)
        first = screen.plan(self.space, best) if best else []
        for params in first:
            self.study.enqueue_trial(params)
        if best:
            progress(
                f"sweep: screen ${self.record.screen_usd:.5f} ({wall:.0f} s); best start "
                f"{' '.join(screen.overrides(best))}: its "
                + ", ".join(p["train.finetune"] for p in first)
                + " fine-tuning run first, then the sampler"
            )
        with self._lock:
            self._save()

    def _loop(self, progress: Callable[[str], None]) -> None:
        """Up to ``sweep.parallel`` trials at a time, each in its own lane (one: in the workspace).
        A new trial starts while the trial count and the budget allow; the budget left is shared
        among the trials running (each gets its share, less a trial's other costs, as its live
        ``train.max_usd``)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        n = self.cfg.sweep.parallel
        if n > 1:
            threads = trial_threads(self.cfg)
            progress(
                f"sweep: {n} trials at a time, each in its own copy of the workspace"
                + (f", {threads} torch thread{'s' if threads > 1 else ''} each" if threads else "")
            )
        free = lanes.make_lanes(self.id, n, CARRIED) if n > 1 else [None]
        running: dict = {}  # future -> (lane, the budget it holds)
        with ThreadPoolExecutor(max_workers=n) as pool:
            try:
                while True:
                    while free and (budget := self._next_budget(running, len(free), progress)) is not None:
                        lane, (share, held) = free.pop(), budget
                        running[pool.submit(self._one_trial, share, lane, progress)] = (lane, held)
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        free.append(running.pop(future)[0])
                        future.result()  # a bug in the loop itself surfaces here
            except BaseException:
                # Ctrl-C, SIGTERM: stop the running trials now. Leaving this block waits for the
                # trials' threads, which would otherwise wait for each trial to end on its own.
                self._stopping = True
                stop_running()
                raise

    def _overhead(self) -> float:
        """What a trial costs besides its train stage (DVC, start-ups, evaluation): the most seen
        so far, or the estimate the sweep was given until a trial has finished. The train stage's
        live budget is what is left less this, or the sweep would pass its budget by that much on
        its last trial, and on its first (before any trial finished, with nothing reserved, the
        first trial trained on the whole budget and paid its evaluation and DVC on top)."""
        seen = [t.usd - t.train_usd for t in self.record.trials if t.state in FINISHED]
        return max(seen) if seen else self.overhead_reserve

    def _next_budget(self, running: dict, free: int, progress: Callable[[str], None]) -> tuple[float, float] | None:
        """A new trial's train-stage live budget and what it holds of the sweep's budget (that and
        the trial's other costs), or None when no trial should start now."""
        s = self.cfg.sweep
        with self._lock:
            finished = len([t for t in self.record.trials if t.state != "interrupted"])
            if finished + len(running) >= s.max_trials or (
                s.sampler == "grid" and finished + len(running) >= grid_size(self.space)
            ):
                if not running:
                    self.record.status = "finished"
                return None
            if self._exhausted():
                if not running:
                    self.record.status = "finished"
                    progress("sweep: every setting of the space has run; stopping")
                return None
            left = s.budget_usd - self.spent - sum(held for _, held in running.values())
            cheapest = min((t.usd for t in self.record.trials if t.usd > 0), default=0.0)
            overhead = self._overhead()
            share = left / free - overhead
            if left <= 0 or left < cheapest or share <= 0:
                if not running:
                    self.record.status = "budget"
                    progress(f"sweep: budget ${s.budget_usd:g} reached (${self.spent:.5f} spent); stopping")
                return None
            return share, share + overhead

    def _exhausted(self) -> bool:
        """Every setting of a space of choices has a finished trial, or the sampler proposed only
        settings that ran already, many times in a row (a space with ranges has no end)."""
        if self._repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
            return True
        if any(not isinstance(v, list) for v in self.space.values()):
            return False
        done = {tuple(t.overrides) for t in self.record.trials if t.state in FINISHED}
        return len(done) >= grid_size(self.space)

    def _one_trial(self, share_usd: float, lane: Path | None, progress: Callable[[str], None]) -> None:
        with self._lock:
            trial = self.study.ask()
            prune_trial = self.prune_study.ask()
        overrides = suggest(trial, self.space)
        with self._lock:
            before = ran_before(self.record.trials, overrides)
            if before is not None:  # told the same result, not run, not billed, not counted
                self._tell(trial, prune_trial, before)
                self.record.repeats_skipped += 1
                self._save()
                self._repeats_in_a_row += 1
                progress(
                    f"sweep: the sampler proposed trial {before.number + 1}'s settings again "
                    f"({' '.join(overrides)}): its result stands, not run again ($0)"
                )
                return
            self._repeats_in_a_row = 0
            self._in_flight += 1
            run_no = len([t for t in self.record.trials if t.state != "interrupted"]) + self._in_flight
        for key, value in trial.params.items():  # the companion study sees the same settings
            prune_trial.set_user_attr(key, value)
        # the live budget of the train stage: this trial's share of what the sweep has left
        run_overrides = [*overrides, f"train.max_usd={round(share_usd, 6)}"]
        experiment = f"{self.id}-t{trial.number}"
        progress(
            f"sweep: trial {trial.number + 1} (run {run_no} of at most {self.cfg.sweep.max_trials}) {experiment}: "
            + " ".join(overrides)
        )
        link = {
            "storage": self.storage,
            "study": self.prune_study.study_name,
            "trial_id": prune_trial._trial_id,
            "pruner": self.cfg.sweep.pruner,  # Optuna does not store it: the trial builds the same one
            "max_epochs": self._max_epochs(),
        }
        pidfile = self.pidfile if lane is None else self.pidfile.with_name(f"trial-{lane.name}.pid")
        result = run_trial(self.cfg, trial.number, experiment, run_overrides, link, pidfile, lane)
        result.overrides = overrides
        if self._stopping and result.state == "failed":  # stopped with the sweep: billed for the time it ran
            result.state = "interrupted"
            result.message = f"stopped with the sweep after {result.wall_s:.0f} s; billed for that time"
        with self._lock:
            self._in_flight -= 1
            self._tell(trial, prune_trial, result)
            self.record.trials.append(result)
            self._save()
            progress(self._progress_line(trial.number, result))

    def _tell(self, trial, prune_trial, result: SweepTrial) -> None:
        T = self.optuna.trial.TrialState
        if result.state in ("failed", "interrupted"):
            self.study.tell(trial, state=T.FAIL)
            self.prune_study.tell(prune_trial, state=T.FAIL)
        elif result.state == "pruned":
            self.study.tell(trial, state=T.PRUNED)
            self.prune_study.tell(prune_trial, state=T.PRUNED)
        else:
            self.study.tell(trial, [result.score(self.record.objective), result.usd])
            self.prune_study.tell(prune_trial, result.score(self.record.objective))

    def _progress_line(self, number: int, result: SweepTrial) -> str:
        best = next((t for t in self.record.trials if t.number == self.record.recommended), None)
        obj, score = self.record.objective, result.score(self.record.objective)
        return (
            f"sweep: trial {number + 1} {result.state}: {obj} "
            f"{'-' if score is None else f'{score:.4f}'}, ${result.usd:.5f} "
            f"({result.wall_s:.0f} s) | spent ${self.spent:.5f} of ${self.cfg.sweep.budget_usd:g} | "
            + (
                f"best passing the gates: trial {best.number + 1} ({obj} {best.score(obj):.4f}, ${best.usd:.5f})"
                if best
                else "none passes the gates yet"
            )
            + (f" | {result.message}" if result.message else "")
        )

    def _save(self) -> None:
        self.record.spent_usd = self.spent
        self.record.front = pareto_front(self.record.trials, self.record.objective)
        self.record.recommended = recommend(self.record.trials, self.record.objective)
        self.record.write()
        if self.store is not None:
            try:
                self.store.put_file(f"sweeps/{self.id}/record.json", SweepRecord.path(self.id))
            except StorageError as exc:
                info(f"sweep: record not uploaded ({exc}); kept at {SweepRecord.path(self.id)}")


def upload_chart(cfg: Params, sweep_id: str, png: Path) -> str | None:
    store = Store.optional(cfg.storage, tolerate_transient=True)
    if store is None:
        return None
    try:
        store.put_file(f"sweeps/{sweep_id}/frontier.png", png)
        return store.uri(f"sweeps/{sweep_id}/frontier.png")
    except FrugalError:
        return None

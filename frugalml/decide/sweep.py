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
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from frugalml.contracts import (
    SWEEPS,
    CostEntry,
    SweepRecord,
    SweepTrial,
)
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.costs import price
from frugalml.core.errors import FrugalError, StorageError
from frugalml.core.store import Store
from frugalml.decide import lanes
from frugalml.decide.frontier import pareto_front, recommend
from frugalml.decide.space import FINISHED, check_space, grid, grid_size, ran_before, suggest
from frugalml.decide.trials import CARRIED, run_trial, stop_orphaned_trial, stop_running, trial_threads
from frugalml.model.trial import make_pruner, open_storage

MAX_REPEATS_IN_A_ROW = 200  # proposals of settings that ran already before the sweep stops (ms each)


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
        self.record = self._resumed(folder) if resume else self._new_record(base_overrides)
        if resume:
            self._close_interrupted()
        for entry in prep:
            self.record.prep_usd = round(self.record.prep_usd + entry.total_usd - entry.labeling_usd, 6)
            self.record.prep_labeling_usd = round(self.record.prep_labeling_usd + entry.labeling_usd, 6)
        self.store = Store.optional(cfg.storage, tolerate_transient=True)

    def _new_record(self, base_overrides: list[str]) -> SweepRecord:
        s = self.cfg.sweep
        return SweepRecord(
            id=self.id,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            status="running",
            space={k: (v if isinstance(v, list) else v.model_dump(by_alias=True)) for k, v in self.space.items()},
            budget_usd=s.budget_usd,
            objective=s.objective,
            max_trials=s.max_trials,
            base_overrides=base_overrides,
        )

    def _resumed(self, folder: Path) -> SweepRecord:
        """The record of the sweep being resumed, after stopping what its killed run left behind."""
        for pidfile in folder.glob("trial*.pid"):  # one per lane when trials ran side by side
            if stop_orphaned_trial(pidfile):
                info(f"sweep: stopped a trial the killed sweep left running ({pidfile.name})")
        record = SweepRecord.read(self.id)
        record.status = "running"
        return record

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

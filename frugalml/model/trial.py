"""The link from a train stage to the sweep trial it runs for (``frugalml sweep``).

The sweep sets ``FRUGALML_SWEEP_TRIAL`` for the experiment it starts: the Optuna storage, the
pruning study and the trial's id. After each epoch the stage reports its validation accuracy
there and asks the pruner (successive halving or Hyperband, over the trials so far) whether to
go on. A pruned training stops like a budget stop: the last epoch's model is kept and evaluated,
so the trial is a complete (and billed) DVC experiment. Optuna's pruners are single-objective,
so they run on a companion study of validation accuracy beside the sweep's accuracy-vs-$ study.
Optuna keeps a study's trials in its storage but not its pruner: the link names the pruner, and
the trial builds the same one (``make_pruner``) as the sweep did.
"""

from __future__ import annotations

import json
import os

ENV = "FRUGALML_SWEEP_TRIAL"


def make_pruner(name: str, max_epochs: int):
    """``sweep.pruner`` as an Optuna pruner, fed one report per epoch (resource = epochs)."""
    import optuna  # lazy: only sweeps load Optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=2)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


def open_storage(url: str):
    """The sweep's SQLite storage, waiting up to a minute for a lock: trials running side by side
    (``sweep.parallel``) and the sweep itself write to it at the same time."""
    import optuna  # lazy: only sweeps load Optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


class TrialLink:
    def __init__(self, storage: str, study: str, trial_id: int, pruner: str, max_epochs: int):
        import optuna  # lazy: only a sweep's trials load Optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # load_study without a pruner would prune with Optuna's default (MedianPruner)
        self._study = optuna.load_study(
            study_name=study, storage=open_storage(storage), pruner=make_pruner(pruner, max_epochs)
        )
        self._trial = optuna.trial.Trial(self._study, trial_id)

    @classmethod
    def from_env(cls) -> TrialLink | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        return cls(spec["storage"], spec["study"], int(spec["trial_id"]), spec["pruner"], int(spec["max_epochs"]))

    def should_prune(self, epoch: int, val_acc: float) -> bool:
        self._trial.report(val_acc, epoch)
        return self._trial.should_prune()

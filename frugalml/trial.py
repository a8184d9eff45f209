"""The link from a train stage to the sweep trial it runs for (``frugalml sweep``).

The sweep sets ``FRUGALML_SWEEP_TRIAL`` for the experiment it starts: the Optuna storage, the
pruning study and the trial's id. After each epoch the stage reports its validation accuracy
there and asks the pruner (successive halving or Hyperband, over the trials so far) whether to
go on. A pruned training stops like a budget stop: the last epoch's model is kept and evaluated,
so the trial is a complete (and billed) DVC experiment. Optuna's pruners are single-objective,
so they run on a companion study of validation accuracy beside the sweep's accuracy-vs-$ study.
"""

from __future__ import annotations

import json
import os

ENV = "FRUGALML_SWEEP_TRIAL"


class TrialLink:
    def __init__(self, storage: str, study: str, trial_id: int):
        import optuna  # lazy: only a sweep's trials load Optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.load_study(study_name=study, storage=storage)
        self._trial = optuna.trial.Trial(self._study, trial_id)

    @classmethod
    def from_env(cls) -> TrialLink | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        return cls(spec["storage"], spec["study"], int(spec["trial_id"]))

    def should_prune(self, epoch: int, val_acc: float) -> bool:
        self._trial.report(val_acc, epoch)
        return self._trial.should_prune()

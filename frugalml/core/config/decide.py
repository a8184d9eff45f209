"""``sweep`` and ``labels``: the search space and budget of a sweep, and the labels commands."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from frugalml.core.config.base import _Strict


class Range(_Strict):
    """A numeric range in ``sweep.space``: ``{low: 0.0005, high: 0.01, log: true}``."""

    low: float
    """the range's low end"""
    high: float
    """the range's high end"""
    log: bool = False
    """sample on a log scale (low must be > 0)"""
    int_: bool = Field(False, alias="int")
    """whole numbers only"""

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SweepConfig(_Strict):
    """``frugalml sweep``: the search space and what the search may spend."""

    space: dict[str, list[str | int | float | bool] | Range] = {
        "model.image_size": [64, 96],
        "train.finetune": ["head", "last_n", "full"],
        "train.epochs": [3, 6],
    }
    """params keys (model, train, evaluate, gates) to search: a list of choices, or a range `{low, high, log, int}`"""
    objective: Literal["accuracy", "macro_f1"] = "accuracy"
    """the quality axis of the front and the recommendation's tie-break: test `accuracy` or `macro_f1` (the pruner
    always uses per-epoch validation accuracy)
    """
    budget_usd: float = Field(0.05, gt=0)
    """compute the whole sweep may spend (every trial billed as its stages are, plus its DVC and start-up time, at the
    price sheet)
    """
    max_trials: int = Field(10, ge=1)
    """trials at most (a grid stops at its size)"""
    parallel: int = Field(1, ge=1, le=32)
    """trials at a time. DVC runs one temporary experiment at a time per workspace, so above 1 each trial runs in a
    *lane*: a clone of the workspace at its commit with its uncommitted changes and run state, sharing the
    workspace's DVC cache; the experiment is pushed back, so `dvc exp show` and `dvc exp apply` work as usual. The
    budget left is shared among the running trials (each one's live `train.max_usd`). The CPU cores are split
    between the trials (torch threads = cores / parallel, unless `train.num_threads` or `OMP_NUM_THREADS` is set):
    each taking every core slowed two side-by-side trainings 7x on 2 cores. On a CPU box, more trials than cores
    only slows each one. Each trial is billed its share of the machine, `costs.vcpus` (or the cores) / parallel, set
    as the trial's `costs.vcpus` so that its stages' ledgers and live budget use it too: billed whole, two trials
    side by side charged the sweep twice for the same machine-hours
    """
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """`tpe` (multivariate), `random`, or `grid` (every combination of the choices, once)"""
    pruner: Literal["hyperband", "successive_halving", "none"] = "hyperband"
    """`hyperband`, `successive_halving` or `none`, on per-epoch validation accuracy"""
    seed: int = 0
    """the sampler's seed"""
    screen: bool = True
    """before the sampler's trials, screen the *starts* in the space (every combination of its `model.arch`,
    `model.pretrained` and `model.image_size` choices): train the head alone on each start's frozen, cached
    features in the sweep's own process (seconds each, no DVC, no evaluation; billed to the sweep), then run the
    best start's deeper fine-tunings (`train.finetune` deepest first) as the first trials; the sampler takes over
    after them. Applies when `sweep.space` has at least two starts and `train.finetune` choices with `head` and a
    deeper one, and the sampler is not `grid`. A head trained on frozen features ranks what a backbone already
    knows of the data; its cost is one pass over the images per start, where a trial pays DVC, two stage start-ups
    and an evaluation
    """


class LabelsConfig(_Strict):
    """``frugalml labels``: what more labels buy and which labels are wrong (on cached features)."""

    curve_fractions: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
    """`labels curve`: nested, stratified subsets of the train split; at least 3, the last 1.0 (three or more <= 0.5
    give the backtest)
    """
    target_accuracy: float = Field(0.98, gt=0, le=1)
    """`labels curve`: about how many more labels reach it, at what price"""
    bootstrap: int = Field(200, ge=20, le=10_000)
    """`labels curve`: resamples of the test split for the 95% band"""
    audit_folds: int = Field(5, ge=2, le=20)
    """`labels audit`: k of the stratified k-fold out-of-sample probabilities (every class needs k images)"""
    audit_model: Literal["head", "train"] = "head"
    """`labels audit`: the k models: `head` (a head on the cached frozen features: seconds) or `train` (the train
    stage's arch, start and `train.*` settings, trained once per fold on the other folds: k trainings, but far
    better where the backbone is weak)
    """
    audit_filter_by: Literal["both", "prune_by_noise_rate", "prune_by_class", "confident_learning"] = "both"
    """`labels audit`: cleanlab's `filter_by` (`both`, `prune_by_noise_rate`, `prune_by_class`, `confident_learning`)"""
    unlabeled: str | None = None
    """`labels next` / `labels import`: images without labels (a folder, a .zip/.tar archive or an s3:// prefix)"""
    uncertainty: Literal["margin", "entropy"] = "margin"
    """`labels next`: `margin` (1 - the gap between the head's top two probabilities) or `entropy`"""
    candidates: int = Field(5, ge=1, le=1000)
    """`labels next`: the pool is the budget x this most uncertain images; k-means splits it into budget clusters and
    the most uncertain of each is picked (1 = uncertainty alone). On the digits with a random backbone (16 starts of
    the rounds in benchmarks/labels.py): 5 did best, 2 and 3 a little less; k-center greedy, used before, did worse:
    it picks far-out points, and those of a weak feature space are not the informative ones. The value was chosen on
    that benchmark's own test split
    """
    url_expiry_s: int = Field(604_800, ge=60, le=604_800)
    """`labels next`: lifetime of the presigned image URLs (7 days, S3's maximum)"""
    seed: int = 0
    """subsets, folds and resamples"""

    @field_validator("curve_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("every fraction must be in (0, 1]")
        v = sorted(set(v))
        if len(v) < 3 or v[-1] != 1.0:
            raise ValueError("give at least 3 fractions, the last one 1.0 (the whole train split)")
        return v

"""A sweep's search space (``sweep.space``): checked against the config, sampled by an Optuna
trial, enumerated as a grid; and whether a setting has run already."""

from __future__ import annotations

import itertools
import json

from frugalml.contracts import (
    SweepTrial,
)
from frugalml.core import config
from frugalml.core.config import Params, Range
from frugalml.core.errors import ConfigError


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

"""The sweep's screen: which start is worth fine-tuning, for seconds instead of trials.

A *start* is where a model begins: its architecture, its weights (ImageNet or none) and its input
size (``model.arch``, ``model.pretrained``, ``model.image_size``). Fine-tuning deeper than the
head costs a trial per start; but a head trained on a start's frozen features, on the feature
cache, already ranks what that backbone knows of the data. The screen does that for every start
in ``sweep.space``, in the sweep's own process (no DVC, no stage start-ups, no evaluation: one
pass over the images per start, then a few epochs of a linear layer), and the sweep runs the
best start's deeper fine-tunings first (``plan``). Billed to the sweep as its wall time at the
price sheet (``SweepRecord.screen_usd``).

The screen scores on the validation split; the trials alone score on the test split. Starts are
screened without augmentation (the feature cache needs a backbone whose output never varies),
whatever ``train.augment`` says: the trials train as configured.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from frugalml.contracts import ScreenResult
from frugalml.core import config
from frugalml.core.config import AugmentConfig, Params, Range
from frugalml.core.costs import price
from frugalml.core.errors import FrugalError

START_KEYS = ("model.arch", "model.pretrained", "model.image_size")
DEPTHS = ("full", "last_n", "head")  # deepest first: what a good start's first trials try


def starts(space: dict[str, list | Range]) -> list[dict]:
    """Every combination of the space's choices of the start keys (none when it has one start)."""
    keys = [k for k in START_KEYS if isinstance(space.get(k), list)]
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    return combos if len(combos) > 1 else []


def why_not(cfg: Params, space: dict[str, list | Range]) -> str | None:
    """None when the screen applies to this sweep, else why not."""
    depths = space.get("train.finetune")
    if not cfg.sweep.screen:
        return "sweep.screen is off"
    if cfg.sweep.sampler == "grid":
        return "a grid runs every setting anyway"
    if not isinstance(depths, list) or "head" not in depths or len(depths) < 2:
        return "sweep.space's train.finetune choices do not include head and a deeper one"
    if not starts(space):
        return "sweep.space has one start (model.arch / model.pretrained / model.image_size)"
    return None


def plan(space: dict[str, list | Range], best: dict) -> list[dict]:
    """The first trials: the best start at each fine-tuning depth of the space but the head
    (which the screen has just trained), deepest first."""
    depths = [d for d in DEPTHS if d in space["train.finetune"] and d != "head"]
    return [{**best, "train.finetune": d} for d in depths]


def overrides(start: dict) -> list[str]:
    return [f"{k}={v}" for k, v in start.items()]


def screen_config(cfg: Params, start: dict) -> Params:
    """The trials' base settings with this start, the head alone, and nothing that keeps the
    feature cache from applying."""
    raw = config.apply_overrides(config.dump(cfg), overrides(start))
    t = raw["train"]
    t.update(finetune="head", feature_cache=True, compile=False, distill_from=None, max_usd=None)
    t["augment"] = AugmentConfig(rotation_deg=0, translate=0, scale_min=1, scale_max=1).model_dump()
    return config.validate(raw)


def screen(cfg: Params, space: dict[str, list | Range], budget_left: float, progress: Callable[[str], None]):
    """Each start's head-only validation accuracy, in the order of ``starts``. Stops early (with
    the starts screened so far) when the next one would pass ``budget_left``."""
    import torch

    from frugalml.contracts import read_manifest
    from frugalml.model.loop import fit_quietly
    from frugalml.model.modeling import seed_everything, select_device
    from frugalml.model.training import build_trainer

    rows = read_manifest()
    classes = sorted({r["label"] for r in rows})
    device = select_device(cfg.train.device)
    results: list[ScreenResult] = []
    todo = starts(space)
    for i, start in enumerate(todo, 1):
        spent = sum(r.usd for r in results)
        dearest = max((r.usd for r in results), default=0.0)
        if spent + dearest > budget_left:
            progress(f"sweep: screen stopped after {len(results)} starts: the next would pass the budget")
            break
        c = screen_config(cfg, start)
        t0 = time.perf_counter()
        acc, cached, message = None, 0, ""
        try:
            if c.train.num_threads:
                torch.set_num_threads(c.train.num_threads)
            seed_everything(c.train.seed)
            tr, _, _ = build_trainer(c, rows, classes, device, None)
            acc, cached = fit_quietly(tr), tr.cached or 0
        except FrugalError as exc:  # e.g. weights not to be had offline: its trials would fail alike
            message = str(exc).splitlines()[0][:300]
        wall = time.perf_counter() - t0
        usd = price({"wall_s": wall}, cfg.costs, cfg.train.capacity)["total_usd"]
        results.append(
            ScreenResult(
                overrides=overrides(start),
                val_accuracy=None if acc is None else round(acc, 6),
                usd=round(usd, 6),
                wall_s=round(wall, 2),
                features_cached=cached,
                message=message,
            )
        )
        outcome = f"head val_accuracy {acc:.4f}" if acc is not None else f"not screened ({message})"
        progress(f"sweep: screen {i}/{len(todo)} {' '.join(overrides(start))}: {outcome} (${usd:.5f}, {wall:.0f} s)")
    return results


def best_start(space: dict[str, list | Range], results: list[ScreenResult]) -> dict | None:
    """The start whose head scored best (the first of equals), with the space's own values."""
    scored = [r for r in results if r.val_accuracy is not None]
    if not scored:
        return None
    top = max(scored, key=lambda r: r.val_accuracy)
    return next((s for s in starts(space) if overrides(s) == top.overrides), None)

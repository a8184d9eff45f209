"""The live budget (``train.max_usd``): the spend a training may not pass, checked between steps,
and SIGTERM as a stop between steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from frugalml.core.config import Params
from frugalml.core.costs import price
from frugalml.core.errors import Preempted
from frugalml.model.parts import world


class StopSignal:
    """SIGTERM (a spot notice, a node drain) asks training to stop: checked between steps, like
    the budget. The last completed epoch's checkpoint is already in the store (saved before the
    next epoch starts), so stopping loses only the current epoch's work."""

    def __init__(self) -> None:
        self.at: float | None = None  # when SIGTERM arrived (perf_counter)

    def install(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "at", time.perf_counter()))

    def check(self) -> None:
        if self.at is not None:
            raise Preempted("SIGTERM")


class BudgetReached(Exception):
    """Raised inside an epoch when going on would pass ``train.max_usd``."""


@dataclass
class Budget:
    """``train.max_usd``: checked every ``check_every_s`` during an epoch and before the next one.

    ``spent()`` is what the stage has cost so far (start-up included), priced like its cost entry."""

    max_usd: float
    spent: Callable[[], float]
    check_every_s: float = 0.5
    stopped_at: float | None = None  # the spend when it stopped the training
    _last: float = 0.0
    _last_usd: float = 0.0
    _worst: float = 0.0  # the largest spend between two checks so far

    # Steps and the pauses between epochs (validation, the next loader's start) vary, more so on a
    # busy machine: look ahead by the largest interval seen so far, with half again as margin.
    AHEAD_MARGIN = 1.5

    def check(self) -> None:
        """Stop when the spend at the next check (the largest interval so far, plus a margin) would
        pass the budget."""
        now = time.perf_counter()
        if now - self._last < self.check_every_s:
            return
        usd = self.spent()
        if self._last:
            self._worst = max(self._worst, usd - self._last_usd)
        self._last, self._last_usd = now, usd
        if usd + self.AHEAD_MARGIN * self._worst >= self.max_usd:
            self.stopped_at = usd
            raise BudgetReached(f"${usd:.5f} spent of train.max_usd ${self.max_usd:g}")

    def affords(self, usd_next: float) -> bool:
        """Whether work costing ``usd_next`` (plus a 10% margin for the stage's tail: saving the
        model, the report) still fits."""
        usd = self.spent()
        if usd + 1.1 * usd_next < self.max_usd:
            return True
        self.stopped_at = usd
        return False


def budget_for(cfg: Params, device: torch.device, started: float) -> Budget | None:
    """``train.max_usd`` as a live check: the stage's compute (wall x vCPUs) and GPU time since
    ``started`` (epoch seconds, when the stage process started), priced by the price sheet at
    ``train.capacity``'s rates."""
    if cfg.train.max_usd is None:
        return None
    gpus = world() if device.type == "cuda" else 0

    def spent() -> float:
        wall = time.time() - started
        return price({"wall_s": wall, "gpu_s": wall * gpus}, cfg.costs, cfg.train.capacity)["total_usd"]

    return Budget(cfg.train.max_usd, spent)

"""Checkpoints: what one holds (``TrainState``), what inputs it belongs to (``fingerprint``), and
where it is kept (``Checkpointer``: locally, and in the store to resume on another machine)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from frugalml.core.config import Params, dump
from frugalml.core.console import info
from frugalml.core.errors import StorageError
from frugalml.core.fsutil import atomic_write_bytes
from frugalml.core.store import Store
from frugalml.model.parts import Precision

CHECKPOINTS = Path(".frugalml") / "checkpoints"


@dataclass
class TrainState:
    """Where training stands after an epoch: what a checkpoint holds besides the tensors."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    curves: list[str] = field(default_factory=list)
    best: float | None = None
    since_best: int = 0

    def improved(self, metric: float, min_delta: float) -> None:
        if self.best is None or metric > self.best + min_delta:
            self.best, self.since_best = metric, 0
        else:
            self.since_best += 1

    def checkpoint(self, model, opt, sched, gen, precision: Precision) -> dict:
        """Tensors and primitives only: it loads with ``torch.load(..., weights_only=True)``."""
        scaler = {"scaler": precision.scaler.state_dict()} if precision.scaler is not None else {}
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_loader": gen.get_state(),
            **scaler,
            "epoch": self.epoch,
            "step": self.step,
            "history": json.dumps(self.history),
            "curves": json.dumps(self.curves),
            "best": self.best,
            "since_best": self.since_best,
        }

    @classmethod
    def restore(cls, blob: dict, model, opt, sched, gen, precision: Precision) -> TrainState:
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng_torch"])
        gen.set_state(blob["rng_loader"])
        if precision.scaler is not None and "scaler" in blob:
            precision.scaler.load_state_dict(blob["scaler"])
        return cls(
            blob["epoch"],
            blob["step"],
            json.loads(blob["history"]),
            json.loads(blob["curves"]),
            blob["best"],
            blob["since_best"],
        )


def fingerprint(cfg: Params, manifest_sha256: str) -> str:
    """Same inputs -> same fingerprint: a checkpoint is only resumed for the training it belongs to."""
    p = dump(cfg)
    ignored = ("num_workers", "num_threads", "checkpoint_to_s3", "keep_checkpoints", "max_usd", "capacity")
    key = {
        "manifest": manifest_sha256,
        "model": p["model"],
        "train": {k: v for k, v in p["train"].items() if k not in ignored},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Checkpointer:
    """The resume point: locally after every epoch, and under ``checkpoints/<run_id>/`` in S3
    (only the newest epoch is kept there; all of it is deleted when training ends unless
    ``train.keep_checkpoints``: storage is billed per GB-month for as long as it stays)."""

    def __init__(self, cfg: Params, fp: str, run_id: str):
        self.cfg, self.fp, self.run_id = cfg, fp, run_id
        self.local = CHECKPOINTS / fp / "last.pt"
        self.store = Store.optional(cfg.storage, tolerate_transient=True) if cfg.train.checkpoint_to_s3 else None

    def load(self) -> dict | None:
        if self.local.exists():
            return torch.load(self.local, map_location="cpu", weights_only=True)
        if self.store is None:
            return None
        try:
            latest = self.store.get_json(f"checkpoints/{self.run_id}/latest.json")
        except StorageError:
            return None
        if latest.get("fingerprint") != self.fp:
            return None
        self.store.download(latest["key"], self.local)
        return torch.load(self.local, map_location="cpu", weights_only=True)

    def save(self, state: dict, epoch: int) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.local, buf.getvalue())
        if self.store is None:
            return
        key = f"checkpoints/{self.run_id}/epoch-{epoch:04d}.pt"
        try:
            self.store.put_file(key, self.local)
            self.store.put_json(
                f"checkpoints/{self.run_id}/latest.json", {"fingerprint": self.fp, "epoch": epoch, "key": key}
            )
            for o in self.store.list(f"checkpoints/{self.run_id}/epoch-"):  # older epochs are no resume point
                if o["key"] != key:
                    self.store.delete(o["key"])
        except StorageError as exc:  # a lost upload must not cost the epoch: the local copy stays
            info(f"train: warning: checkpoint upload failed ({exc}); kept locally at {self.local}")

    def done(self) -> None:
        self.local.unlink(missing_ok=True)
        if self.store is None or self.cfg.train.keep_checkpoints:
            return
        try:
            for o in self.store.list(f"checkpoints/{self.run_id}/"):
                self.store.delete(o["key"])
        except StorageError as exc:
            info(f"train: warning: could not delete the checkpoints of run {self.run_id} ({exc})")

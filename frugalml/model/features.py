"""The frozen-backbone feature cache: with ``train.finetune: head``, the backbone's output for an
image never changes, so it is computed once and the head trains on it.

Features are keyed by what determines them: the image's content hash, a hash of the backbone's
weights (its parameters and buffers), the architecture, image size and normalisation. They live
in ``.frugalml/features/<key>.pt`` (one file per backbone: image sha256 -> feature vector) and,
when a store is configured, in ``features/<key>.pt`` in the bucket, so a team or a CI machine
computes each image's features once. A new image only adds its own rows.

It applies when nothing makes the backbone's output vary between epochs: ``finetune: head``, no
augmentation (``train.augment`` all off), one process, ``train.feature_cache: true``. The frozen
backbone runs in eval mode on both paths (see ``freeze_frozen_norms``), so the head sees the same
inputs with or without the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from frugalml.core.config import Params, feature_cache_off
from frugalml.core.console import Progress, info
from frugalml.core.errors import StorageError
from frugalml.core.fsutil import atomic_write_bytes
from frugalml.core.store import Store
from frugalml.model.modeling import ManifestDataset, eval_transform, head_module

FEATURES = Path(".frugalml") / "features"


def why_not(cfg: Params, world: int) -> str | None:
    """None when the cache applies to this training, else the reason it does not."""
    return feature_cache_off(cfg.train, world)


def backbone_sha256(model: nn.Module) -> str:
    """A hash of every tensor outside the head: the weights that determine the features."""
    head, _ = head_module(model)
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(head + "."):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(cfg: Params, backbone: str) -> str:
    """Every input of an image's features besides its bytes: the backbone's weights, the arch, the
    input size and normalisation, and the cap on the prepared image's side (``data.max_side``)."""
    m = cfg.model
    mean, std = m.norm()
    spec = {
        "arch": m.arch,
        "backbone": backbone,
        "size": m.image_size,
        "mean": list(mean),
        "std": list(std),
        "max_side": cfg.data.max_side,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


class FeatureCache:
    """image sha256 -> feature vector for one backbone, locally and (best effort) in the store."""

    def __init__(self, key: str, store: Store | None):
        self.key, self.store = key, store
        self.local = FEATURES / f"{key}.pt"
        self.remote = f"features/{key}.pt"

    def load(self) -> dict[str, torch.Tensor]:
        """The entry's features; {} when there is none or it is malformed (then it is removed,
        locally, so it is recomputed instead of staying pinned)."""
        if not self.local.exists() and self.store is not None:
            try:
                if self.store.exists(self.remote):
                    self.store.download(self.remote, self.local)  # checks the sha256 recorded at write
            except StorageError as exc:
                info(f"train: feature cache not read from the store ({exc}); computing locally")
        if not self.local.exists():
            return {}
        try:
            blob = torch.load(self.local, map_location="cpu", weights_only=True)
            keys, feats = blob["sha256"], blob["features"]
            if not (isinstance(keys, list) and isinstance(feats, torch.Tensor) and feats.dim() == 2):
                raise ValueError("not a list of image hashes and a 2-D tensor of features")
            if len(keys) != len(feats) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"{len(keys)} image hashes for {len(feats)} feature rows")
        except Exception as exc:  # a torn, foreign or tampered file: not used, not kept
            info(f"train: feature cache {self.key} is malformed ({exc.__class__.__name__}: {exc}); discarded")
            self.discard()
            return {}
        return dict(zip(keys, feats))

    def discard(self) -> None:
        self.local.unlink(missing_ok=True)

    def save(self, features: dict[str, torch.Tensor]) -> None:
        keys = sorted(features)
        buf = io.BytesIO()
        torch.save({"sha256": keys, "features": torch.stack([features[k] for k in keys])}, buf)
        atomic_write_bytes(self.local, buf.getvalue())
        if self.store is not None:
            try:
                self.store.put_file(self.remote, self.local)
            except StorageError as exc:  # the local copy serves this machine; the team copy is a bonus
                info(f"train: feature cache not uploaded ({exc}); kept at {self.local}")


class _Headless(nn.Module):
    """The model with its head replaced by the identity: image -> feature vector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        path, head = head_module(model)
        self.model, self.path, self.head = model, path, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parent_path, _, attr = self.path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        setattr(parent, attr, nn.Identity())
        try:
            return self.model(x)
        finally:
            setattr(parent, attr, self.head)


def headless(model: nn.Module) -> nn.Module:
    """``model`` without its head, in eval mode: image batch -> feature vectors."""
    return _Headless(model).eval()


@torch.no_grad()
def extract(
    model: nn.Module, rows: list[dict], root: Path, cfg: Params, device: torch.device, what: str = "computing"
) -> torch.Tensor:
    """The backbone's features for ``rows`` (eval mode, in order), batch by batch, with progress."""
    m = cfg.model
    ds = ManifestDataset(rows, root, sorted({r["label"] for r in rows}), eval_transform(m.image_size, *m.norm()))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=False)
    was_training = model.training
    net = headless(model)
    out = []
    progress = Progress(f"train: {what} backbone features", len(rows), "images")
    for x, _ in loader:
        out.append(net(x.to(device)).float().cpu())
        progress.update(len(x))
    progress.close()
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def features_for(
    model: nn.Module, rows: list[dict], root: Path, cfg: Params, device: torch.device, store: Store | None
) -> tuple[torch.Tensor, int]:
    """Features for ``rows`` in order, and how many came from the cache (the rest are computed
    now and added to it)."""
    cache = FeatureCache(cache_key(cfg, backbone_sha256(model)), store)
    known = cache.load()
    if known and not agrees(model, known, rows, root, cfg, device):
        info(
            f"train: feature cache {cache.key} disagrees with the backbone on images computed again; "
            "discarded, computing every image"
        )
        cache.discard()
        known = {}
    missing = [r for r in rows if r["sha256"] not in known]
    if missing:
        for r, f in zip(missing, extract(model, missing, root, cfg, device)):
            known[r["sha256"]] = f
        cache.save(known)
    info(f"train: feature cache {cache.key}: {len(rows) - len(missing)} of {len(rows)} images cached")
    return torch.stack([known[r["sha256"]] for r in rows]), len(rows) - len(missing)


SPOT_CHECK = 16  # cached images whose features are computed again before the entry is trusted


def agrees(model: nn.Module, known: dict, rows: list[dict], root: Path, cfg: Params, device) -> bool:
    """Whether the entry holds this backbone's features: ``SPOT_CHECK`` of the requested images it
    has, drawn at random, are computed again and compared. An entry is keyed by what produces the
    features, but the store is writable by others: a wrong entry under the right key (a bug of
    another version, a tampered object) is caught here instead of training a head on it."""
    import random

    cached = [r for r in rows if r["sha256"] in known]
    if not cached:
        return True
    sample = random.Random().sample(cached, min(SPOT_CHECK, len(cached)))
    with torch.random.fork_rng(devices=[]):  # the check draws nothing from training's random stream
        fresh = extract(model, sample, root, cfg, device, what="checking cached")
    stored = torch.stack([known[r["sha256"]] for r in sample]).float()
    return fresh.shape == stored.shape and torch.allclose(fresh, stored, rtol=1e-3, atol=1e-4)

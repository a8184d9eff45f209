"""What a run will cost before it runs: wall time and USD per stage for the current params.

Train, the stage that grows with the settings, is estimated from the run history when there is
one for the same arch, image size, fine-tuning depth, batch size, precision and device: seconds
per image-epoch (the stage's wall minus its start-up, over images x epochs), times the planned
image-epochs. Without history it is measured: a short probe runs a few real training steps of
this model on this machine (and decodes a few prepared images) and scales them up. Evaluate is
probed the same way. Ingest, validate, gate and package take the median of earlier runs over the
same source; without history they are shown as unknown rather than guessed. Labeling is priced
for the images not labeled before (all of them when nothing was ingested yet).
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from frugalml.contracts import MANIFEST, PREPARED, STAGES, ImportRecord, RunRecord, read_manifest
from frugalml.core.config import Params, TrainConfig, dump, feature_cache_off
from frugalml.core.costs import price
from frugalml.core.errors import ConfigError

BUILTIN_IMAGES = {"builtin:digits": 1797, "builtin:shapes": 3000}
PROBE_STEPS = 5  # timed training steps (the median counts), after one warm-up step
HISTORY_RUNS = 5  # the most recent matching runs a figure is the median of


@dataclass
class Probe:
    startup_s: float  # interpreter, torch and the stage's modules
    train_s_per_image: float  # forward + backward + optimizer step
    eval_s_per_image: float  # forward only
    load_s_per_image: float  # decode + transform of a prepared image


@dataclass
class StageEstimate:
    stage: str
    wall_s: float | None  # None: no basis (no history, no probe)
    usd: float | None
    basis: str


@dataclass
class Estimate:
    stages: list[StageEstimate]
    labeling_usd: float
    new_images: int
    images: dict[str, int]  # per split
    notes: list[str] = field(default_factory=list)
    probe: Probe | None = None  # what the probe measured, when it ran

    @property
    def wall_s(self) -> float:
        return round(sum(s.wall_s or 0.0 for s in self.stages), 1)

    @property
    def compute_usd(self) -> float:
        return round(sum(s.usd or 0.0 for s in self.stages), 6)

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "wall_s": self.wall_s,
            "compute_usd": self.compute_usd,
            "total_usd": round(self.compute_usd + self.labeling_usd, 6),
        }


# -- the images a run will see ---------------------------------------------------------------------
def split_counts(cfg: Params) -> tuple[dict[str, int], int]:
    """Images per split, and how many are new (to be labeled): from the manifest when the source
    was ingested before (new: what `frugalml labels import` wrote since), else from the source's
    known size and ``data.splits``."""
    rows = read_manifest() if MANIFEST.exists() else []
    if rows:
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
        return counts, ImportRecord.pending({r["sha256"] for r in rows})  # `frugalml labels import`ed
    n = BUILTIN_IMAGES.get(cfg.data.source)
    if n is None:
        raise ConfigError(
            f"estimate: no manifest yet and {cfg.data.source} is not a built-in dataset; run "
            "`dvc repro ingest` (or `frugalml run --until ingest`) first so the image count is known"
        )
    s = cfg.data.splits
    counts = {"train": round(n * s.train), "val": round(n * s.val)}
    counts["test"] = n - counts["train"] - counts["val"]
    return counts, n


# -- history ---------------------------------------------------------------------------------------
def _train_signature(p: dict) -> tuple | None:
    """What a run's train cost per image-epoch depends on (None for params this version cannot read)."""
    try:
        t = TrainConfig.model_validate(p.get("train", {}))
    except ValueError:
        return None
    m = p.get("model", {})
    keys = (m.get("arch"), m.get("image_size"), t.finetune, t.batch_size, t.precision, t.device)
    return (*keys, feature_cache_off(t) is None)


def from_history(cfg: Params, records: list[RunRecord], image_epochs: int) -> dict[str, StageEstimate]:
    """Per-stage estimates from earlier runs: train per image-epoch for the same training
    signature, the other stages' median wall for the same source."""
    want = _train_signature(dump(cfg))
    out: dict[str, StageEstimate] = {}
    per_ie, startup = [], []
    for r in reversed(records):
        row = r.stage("train")
        if row is None or row.status != "ran" or not row.image_epochs or _train_signature(r.params) != want:
            continue
        per_ie.append((row.wall_s - row.startup_s) / row.image_epochs)
        startup.append(row.startup_s)
        if len(per_ie) == HISTORY_RUNS:
            break
    if per_ie:
        wall = statistics.median(startup) + statistics.median(per_ie) * image_epochs
        out["train"] = StageEstimate(
            "train", round(wall, 1), _usd(cfg, wall, cfg.train.capacity), f"history ({len(per_ie)} runs)"
        )
    for stage in STAGES:
        if stage == "train":
            continue
        walls = [
            row.wall_s
            for r in reversed(records)
            if r.params.get("data", {}).get("source") == cfg.data.source
            and (row := r.stage(stage)) is not None
            and row.status == "ran"
        ][:HISTORY_RUNS]
        if walls:
            wall = statistics.median(walls)
            out[stage] = StageEstimate(stage, round(wall, 1), _usd(cfg, wall), f"history ({len(walls)} runs)")
    return out


# -- the probe -------------------------------------------------------------------------------------
_IMPORT_S: list[float] = []  # measured once per process


def _import_seconds() -> float:
    """What a stage process pays before its first step: the imports, measured the first time
    (when torch is not loaded yet in this process; else a typical figure for this machine)."""
    if not _IMPORT_S:
        if "torch" in sys.modules:
            _IMPORT_S.append(5.0)
        else:
            t0 = time.perf_counter()
            importlib.import_module("frugalml.model.training")
            _IMPORT_S.append(round(time.perf_counter() - t0 + 0.3, 2))  # + the interpreter, frugalml's modules
    return _IMPORT_S[0]


def probe(cfg: Params) -> Probe:
    """A few real training steps of this model on this machine, on random images of the
    configured size (the time does not depend on the pixels), and a few prepared images decoded."""
    startup = _import_seconds()
    import torch  # lazy: torch: seconds to import; only a probe pays for it
    from torch import nn

    from frugalml.model import parts
    from frugalml.model.modeling import build_model, param_groups, select_device

    m, t = cfg.model, cfg.train
    torch.set_num_threads(t.num_threads or torch.get_num_threads())
    device = select_device(t.device)
    model = build_model(m.arch, 10).to(device)
    opt = parts.create_optimizer(param_groups(model, t.finetune, t.finetune_last_n, t.lr, t.backbone_lr_mult), t)
    precision = parts.Precision.choose(t.precision, device)
    x = torch.randn(t.batch_size, 3, m.image_size, m.image_size, device=device)
    y = torch.randint(0, 10, (t.batch_size,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.train()
        parts.freeze_frozen_norms(model)
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn(model(x).float(), y)
        precision.backward_step(loss, opt)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    step()  # warm-up: allocations, autotuning
    train_s = statistics.median(timed(step) for _ in range(PROBE_STEPS)) / t.batch_size
    model.eval()
    with torch.no_grad(), precision.autocast():
        eval_s = statistics.median(timed(lambda: model(x)) for _ in range(PROBE_STEPS)) / t.batch_size
    return Probe(startup, train_s, eval_s, _load_seconds(cfg))


def _load_seconds(cfg: Params, n: int = 32) -> float:
    rows = read_manifest()[:n] if MANIFEST.exists() else []
    if not rows:
        return 0.0
    from frugalml.model.modeling import ManifestDataset, train_transform

    m = cfg.model
    ds = ManifestDataset(rows, PREPARED, sorted({r["label"] for r in rows}), train_transform(m.image_size, *m.norm()))
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return (time.perf_counter() - t0) / len(ds)


def from_probe(cfg: Params, p: Probe, images: dict[str, int]) -> dict[str, StageEstimate]:
    t, ev = cfg.train, cfg.evaluate
    n_train, n_val = images["train"], images["val"]
    if feature_cache_off(t) is None:  # the head trains on cached features: one forward per image
        wall = p.startup_s + (n_train + n_val) * (p.eval_s_per_image + p.load_s_per_image)
        basis = "probe (feature cache: one backbone pass)"
    else:
        per_epoch = n_train * (p.train_s_per_image + p.load_s_per_image)
        per_epoch += n_val * (p.eval_s_per_image + p.load_s_per_image)
        wall = p.startup_s + t.epochs * per_epoch
        basis = f"probe ({PROBE_STEPS} steps)"
    test = images["test"] * (p.eval_s_per_image + p.load_s_per_image)
    latency = ev.latency_samples * p.eval_s_per_image * min(8, t.batch_size)  # batch 1 is not 1/B of a batch
    wall_eval = p.startup_s + test + latency
    return {
        "train": StageEstimate("train", round(wall, 1), _usd(cfg, wall, cfg.train.capacity), basis),
        "evaluate": StageEstimate("evaluate", round(wall_eval, 1), _usd(cfg, wall_eval), "probe"),
    }


def _usd(cfg: Params, wall_s: float, capacity: str = "on_demand") -> float:
    device_gpu = cfg.train.device == "cuda"
    return price({"wall_s": wall_s, "gpu_s": wall_s if device_gpu else 0.0}, cfg.costs, capacity)["total_usd"]


def estimate(cfg: Params, records: list[RunRecord], *, allow_probe: bool = True) -> Estimate:
    """The per-stage estimate for ``cfg`` (history first, then the probe)."""
    images, new = split_counts(cfg)
    image_epochs = images["train"] * cfg.train.epochs  # as the cost entry counts them
    found = from_history(cfg, records, image_epochs)
    notes, measured = [], None
    if allow_probe and ("train" not in found or "evaluate" not in found):
        measured = probe(cfg)
        probed = from_probe(cfg, measured, images)
        for stage, e in probed.items():
            found.setdefault(stage, e)
    stages = [found.get(s) or StageEstimate(s, None, None, "no history") for s in STAGES]
    if any(s.wall_s is None for s in stages):
        notes.append("stages without history are left out of the total until they have run once")
    labeling = price({"labeled_images": new}, cfg.costs)["labeling_usd"]
    return Estimate(stages, labeling, new, images, notes, measured)

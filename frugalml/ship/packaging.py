"""Packaging: a BentoML model and bento for an accepted model, uploaded and registered.

``package(cfg, meter, run_id)`` packages nothing for a model the gate rejected: it returns a
``PackageReport`` with ``packaged: false`` and the reason (the stage succeeds, so that a
rejected ``dvc exp run`` is still a completed experiment; ``frugalml run`` stops before this
stage on a rejection and exits 3). Otherwise it
saves the BentoML model (classes, architecture, image size, normalisation, metrics, gate, costs
and lineage in its metadata), builds the bento from ``frugalml/ship/serving/``, exports it, uploads
it to ``bentos/<model>/<version>.bento`` and then, last, writes the immutable version record
``registry/<model>/versions/<version>.json``; it returns the ``PackageReport``. A replay of the
same run finds its version registered and does nothing.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from frugalml.contracts import (
    MANIFEST,
    MODEL,
    STAGES,
    CostEntry,
    EvalReport,
    GateDecision,
    PackageReport,
    TrainReport,
    VariantsReport,
)
from frugalml.core.config import Params, dump
from frugalml.core.console import err, info
from frugalml.core.costs import CostMeter
from frugalml.core.errors import DataError
from frugalml.core.fsutil import to_json
from frugalml.core.lineage import file_hash, git_commit
from frugalml.core.registry import Registry
from frugalml.core.store import Store
from frugalml.ship import bento

EXPORT_DIR = Path(".frugalml") / "bentos"


def _costs_so_far() -> dict:
    """USD of the stages before this one (those that have a cost entry)."""
    entries = {s: CostEntry.for_stage(s) for s in STAGES[: STAGES.index("package")]}
    return {s: e.total_usd for s, e in sorted(entries.items()) if e is not None}


def version_for(run: str, model_sha: str) -> str:
    """The registry version of a run's model: a replay of the same run and model is the same
    version. ``v<run's UTC date>-<time>-<model sha256[:8]>``; a run id without a timestamp
    (a manual stage run) uses the current time."""

    m = re.search(r"(\d{8})T(\d{6})Z", run)
    stamp = f"{m.group(1)}-{m.group(2)}" if m else time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    suffix = hashlib.sha256(run.encode()).hexdigest()[:4]
    return f"v{stamp}-{model_sha[:8]}-{suffix}"


METRICS_KEPT = (
    "accuracy",
    "macro_f1",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_images_per_s",
    "model_size_bytes",
    "parameters",
)


def version_record(cfg: Params, run_id: str, version: str, model_sha: str, gate: GateDecision) -> dict:
    """The registry's record of a version (also the BentoML model's metadata), without the bento fields."""
    ev, tr = EvalReport.read(), TrainReport.read()
    params_text = to_json(dump(cfg))
    m = cfg.model
    return {
        "model": m.name,
        "version": version,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": m.arch,
        "image_size": m.image_size,
        "mean": list(m.norm()[0]),  # what the model was trained with (model.mean/std or the arch's)
        "std": list(m.norm()[1]),
        "classes": sorted(ev.per_class),
        "metrics": ev.model_dump(include=set(METRICS_KEPT)),
        "train": {
            "epochs": tr.epochs,
            "device": tr.device,
            "train_images": tr.train_images,
            "final_val_acc": tr.final_val_acc,
        },
        "gate": gate.model_dump(mode="json", exclude_none=True),
        "variant": _variant(gate.variant),
        "costs_usd": _costs_so_far(),
        "lineage": {
            "git_commit": git_commit(),
            "params_sha256": file_hash("params.yaml"),
            "params_resolved_sha256": hashlib.sha256(params_text.encode()).hexdigest(),
            "manifest_sha256": file_hash(MANIFEST),
            "model_sha256": model_sha,
            "pretrained": tr.pretrained.model_dump(mode="json", exclude_none=True),
        },
    }


def _variant(name: str) -> dict:
    """The served variant's measured figures (metrics/variants.json), as the registry keeps them."""
    report = VariantsReport.read_if_exists()
    score = next((v for v in report.variants if v.name == name), None) if report else None
    if score is None:
        return {"name": name}
    return score.model_dump(mode="json", exclude_none=True, exclude={"reason", "status"})


def _onnx_file(gate: GateDecision) -> Path | None:
    """The ONNX file the chosen variant runs, which the bento ships (None: the PyTorch model)."""
    if gate.variant == "fp32":
        return None
    report = VariantsReport.read()
    path = Path(next(v for v in report.variants if v.name == gate.variant).file)
    if not path.is_file():
        raise DataError(f"the gate judged the {gate.variant} variant, but {path} is missing: run the compress stage")
    return path


def _report(store: Store, record: dict) -> PackageReport:
    name, version = record["model"], record["version"]
    return PackageReport(
        model=name,
        version=version,
        bento_tag=record["bento_tag"],
        bento_uri=record["bento_uri"],
        bento_bytes=record["bento_bytes"],
        registry_uri=store.uri(f"registry/{name}/versions/{version}.json"),
    )


def package(cfg: Params, meter: CostMeter, run_id: str) -> PackageReport:
    gate = GateDecision.read()
    if gate.decision != "accept":
        reason = f"the gate rejected this model (failed: {', '.join(gate.failed)}); see {GateDecision.PATH}"
        err.print(
            f"[bold red]package: REJECTED[/bold red] {reason}. Nothing is packaged "
            "(the stage succeeds, so that `dvc exp run` keeps the experiment; `frugalml run` exits 3)."
        )
        return PackageReport(model=cfg.model.name, packaged=False, reason=reason)
    bento.use_workspace_home()
    name = cfg.model.name
    model_sha = file_hash(MODEL)
    version = version_for(run_id, model_sha)
    store = Store.from_config(cfg.storage)
    reg = Registry(store, name)
    done = reg.find(version)
    if done and done.get("lineage", {}).get("model_sha256") == model_sha and done.get("run_id") == run_id:
        info(f"package: {name} {version} is already registered by this run (a replay); nothing to do")
        return _report(store, done)
    record = version_record(cfg, run_id, version, model_sha, gate)
    model_tag = bento.save_model(name, version, MODEL, record, _onnx_file(gate))
    info(f"package: BentoML model {model_tag}; building the bento")
    bento_tag = bento.build_bento(name, version, model_tag, cfg.serving)
    archive = bento.export_bento(bento_tag, EXPORT_DIR / f"{name}-{version}.bento")
    key = f"bentos/{name}/{version}.bento"
    info(f"package: uploading {archive.stat().st_size / 1e6:.1f} MB to {store.uri(key)}")
    digest = store.put_file(key, archive)
    record.update(
        {
            "bento_tag": bento_tag,
            "bento_uri": store.uri(key),
            "bento_sha256": digest,
            "bento_bytes": archive.stat().st_size,
        }
    )
    reg.register(version, record)  # written last: it points at the bento
    meter.add(stored_bytes=archive.stat().st_size)
    info(f"package: registered {name} {version}")
    return _report(store, record)

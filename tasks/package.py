"""Stage package: a BentoML model and bento for an accepted model, uploaded and registered.

Refuses a model the gate rejected (exit 3). Otherwise saves the BentoML model (with classes,
architecture, image size, normalisation, metrics, gate, costs and lineage in its metadata),
builds the bento from ``frugalml/serving/``, exports it, uploads it to
``bentos/<model>/<version>.bento`` and then, last, writes the immutable version record
``registry/<model>/versions/<version>.json``. Writes ``metrics/package.json``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from frugalml import bento
from frugalml.config import Params, dump
from frugalml.console import info
from frugalml.costs import CostMeter
from frugalml.errors import Rejected
from frugalml.fsutil import atomic_write_json, read_json, to_json
from frugalml.lineage import file_hash, git_commit
from frugalml.registry import Registry
from frugalml.store import Store
from tasks._stage import run_id
from tasks.evaluate import REPORT as EVAL_REPORT
from tasks.gate import REPORT as GATE_REPORT
from tasks.ingest import MANIFEST
from tasks.train import MODEL, REPORT as TRAIN_REPORT

REPORT = Path("metrics/package.json")
EXPORT_DIR = Path(".frugalml") / "bentos"


def _costs_so_far() -> dict:
    out = {}
    for p in sorted(Path("costs").glob("*.json")):
        if p.stem != "package":
            out[p.stem] = read_json(p).get("total_usd", 0.0)
    return out


def version_for(run: str, model_sha: str) -> str:
    """The registry version of a run's model: a replay of the same run and model is the same
    version. ``v<run's UTC date>-<time>-<model sha256[:8]>``; a run id without a timestamp
    (a manual stage run) uses the current time."""
    import re

    m = re.search(r"(\d{8})T(\d{6})Z", run)
    stamp = f"{m.group(1)}-{m.group(2)}" if m else time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    suffix = hashlib.sha256(run.encode()).hexdigest()[:4]
    return f"v{stamp}-{model_sha[:8]}-{suffix}"


def run(cfg: Params, meter: CostMeter) -> dict:
    gate = read_json(GATE_REPORT)
    if gate["decision"] != "accept":
        raise Rejected(f"the gate rejected this model (failed: {', '.join(gate['failed'])}); nothing is packaged. "
                       f"See {GATE_REPORT}.")
    bento.use_workspace_home()
    name = cfg.model.name
    model_sha = file_hash(MODEL)
    version = version_for(run_id(), model_sha)
    store = Store.from_config(cfg.storage)
    reg = Registry(store, name)
    done = reg.find(version)
    if done and done.get("lineage", {}).get("model_sha256") == model_sha and done.get("run_id") == run_id():
        info(f"package: {name} {version} is already registered by this run (a replay); nothing to do")
        result = {"model": name, "version": version, "bento_tag": done["bento_tag"], "bento_uri": done["bento_uri"],
                  "bento_bytes": done["bento_bytes"], "registry_uri": store.uri(f"registry/{name}/versions/{version}.json")}
        atomic_write_json(REPORT, result)
        return result
    ev, tr = read_json(EVAL_REPORT), read_json(TRAIN_REPORT)
    params_text = to_json(dump(cfg))
    record = {
        "model": name, "version": version, "run_id": run_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": cfg.model.arch, "image_size": cfg.model.image_size, "mean": list(cfg.model.mean), "std": list(cfg.model.std),
        "classes": sorted(ev["per_class"]),
        "metrics": {k: ev[k] for k in ("accuracy", "macro_f1", "latency_ms_p50", "latency_ms_p95",
                                       "throughput_images_per_s", "model_size_bytes", "parameters")},
        "train": {k: tr[k] for k in ("epochs", "device", "train_images", "final_val_acc")},
        "gate": gate, "costs_usd": _costs_so_far(),
        "lineage": {"git_commit": git_commit(), "params_sha256": file_hash("params.yaml"),
                    "params_resolved_sha256": hashlib.sha256(params_text.encode()).hexdigest(),
                    "manifest_sha256": file_hash(MANIFEST), "model_sha256": model_sha,
                    "pretrained": tr.get("pretrained", {"kind": "none"})},
    }
    model_tag = bento.save_model(name, version, MODEL, record)
    info(f"package: BentoML model {model_tag}; building the bento")
    bento_tag = bento.build_bento(name, version, model_tag, cfg.serving)
    archive = bento.export_bento(bento_tag, EXPORT_DIR / f"{name}-{version}.bento")
    key = f"bentos/{name}/{version}.bento"
    info(f"package: uploading {archive.stat().st_size / 1e6:.1f} MB to {store.uri(key)}")
    digest = store.put_file(key, archive)
    record.update({"bento_tag": bento_tag, "bento_uri": store.uri(key), "bento_sha256": digest,
                   "bento_bytes": archive.stat().st_size})
    reg.register(version, record)  # written last: it points at the bento
    meter.add(stored_bytes=archive.stat().st_size)
    result = {"model": name, "version": version, "bento_tag": bento_tag, "bento_uri": store.uri(key),
              "bento_bytes": archive.stat().st_size, "registry_uri": store.uri(f"registry/{name}/versions/{version}.json")}
    atomic_write_json(REPORT, result)
    info(f"package: registered {name} {version}")
    return result


def main() -> None:
    from tasks._stage import stage_main

    stage_main("package", run)


if __name__ == "__main__":
    main()

"""Stage ingest: a source of ``<class>/<image>`` files -> normalised images + manifest.

Reads ``data.source``; writes ``data/prepared/<label>/<sha>.png`` (RGB), ``data/manifest.csv``
(one row per image with the original attributes) and ``metrics/ingest.json`` (counts and every
file left out, with its reason). It never stops on one bad file. Splits come from ``train/``,
``val/``, ``test/`` folders when the source has them, else from the content hash, and an image
seen in an earlier ingest keeps its split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from frugalml.config import Params
from frugalml.console import Progress, info
from frugalml.costs import CostMeter
from frugalml.errors import DataError
from frugalml.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from frugalml.images import ImageRejected, cap_side, decode, png_bytes
from frugalml.sources import Entry, describe, is_hidden, iter_archive, iter_folder, iter_s3, write_builtin_digits

PREPARED = Path("data/prepared")
MANIFEST = Path("data/manifest.csv")
REPORT = Path("metrics/ingest.json")
COLUMNS = ["path", "label", "split", "sha256", "width", "height", "mode", "format", "bytes", "source_path",
           "source_stamp"]
SPLIT_NAMES = ("train", "val", "test")
KEEP_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}


@dataclass
class IngestResult:
    images: int
    classes: int
    rejected: int
    new: int
    removed: int


def split_from_hash(sha256: str, cfg: Params) -> str:
    x = int(sha256[:12], 16) / float(16**12)
    s = cfg.data.splits
    if x < s.train:
        return "train"
    if x < s.train + s.val:
        return "val"
    return "test"


def read_manifest(path: Path = MANIFEST) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_manifest(rows: list[dict], path: Path = MANIFEST) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["label"], r["sha256"])):
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def iter_source(cfg: Params) -> tuple[str, object]:
    src = cfg.data.source
    kind = describe(src)
    if kind == "builtin":
        return kind, iter_folder(write_builtin_digits(Path(".frugalml") / "builtin" / "digits"))
    if kind == "s3":
        from frugalml.store import Store

        return kind, iter_s3(src, Store.from_config(cfg.storage))
    if kind == "archive":
        return kind, iter_archive(Path(src).expanduser())
    return kind, iter_folder(Path(src).expanduser())


def classify_entry(entry: Entry, extensions: list[str]) -> tuple[str | None, str | None, str | None, str]:
    """(label, split or None, reject reason or None, detail)."""
    parts = PurePosixPath(entry.path).parts
    split = None
    if len(parts) >= 3 and parts[0] in SPLIT_NAMES:
        split, parts = parts[0], parts[1:]
    if entry.problem:
        return None, split, entry.problem, entry.detail
    if len(parts) < 2:
        return None, split, "outside_class_folder", "files must sit in a <class>/ folder"
    suffix = PurePosixPath(entry.path).suffix.lower()
    if suffix not in extensions:
        return parts[0], split, "unknown_extension", suffix or "(none)"
    if entry.size == 0:
        return parts[0], split, "empty", "zero bytes"
    return parts[0], split, None, ""


def _process(entry: Entry, label: str, split: str | None, cfg: Params) -> dict:
    try:
        data = entry.read()
    except OSError as exc:
        raise ImageRejected("unreadable", str(exc)) from None
    sha = hashlib.sha256(data).hexdigest()
    rgb, attrs = decode(data, cfg.data.max_pixels)
    capped = cap_side(rgb, cfg.data.max_side)
    keep_original = attrs.pop("unchanged") and capped is rgb and attrs["format"] in KEEP_FORMATS
    # An upright RGB PNG/JPEG is stored as is: no re-encode, no generation loss.
    ext = KEEP_FORMATS[attrs["format"]] if keep_original else ".png"
    rel = f"{label}/{sha[:32]}{ext}"
    out = PREPARED / rel
    if not out.exists():  # outputs are recreated by a re-run: atomic, no fsync per file
        atomic_write_bytes(out, data if keep_original else png_bytes(capped), fsync=False)
    return {"path": rel, "label": label, "split": split or "", "sha256": sha, "bytes": len(data),
            "source_path": entry.path, "source_stamp": entry.stamp, **attrs}


def run(cfg: Params, meter: CostMeter) -> IngestResult:
    old_rows = read_manifest()
    previous = {r["sha256"]: r for r in old_rows}
    by_source = {r["source_path"]: r for r in old_rows if r.get("source_stamp")}
    kind, entries = iter_source(cfg)
    info(f"ingest: reading {kind} source {cfg.data.source}")
    workers = cfg.data.workers or min(8, (os.cpu_count() or 1) * 2)
    rows: list[dict] = []
    rejected: list[dict] = []
    hidden = reused = submitted = 0
    lock = threading.Lock()
    progress = Progress("ingest", None, "files")

    def reject(path: str, reason: str, detail: str) -> None:
        with lock:
            rejected.append({"path": path, "reason": reason, "detail": detail})

    def task(entry: Entry, label: str, split: str | None) -> None:
        try:
            row = _process(entry, label, split, cfg)
            with lock:
                rows.append(row)
        except ImageRejected as exc:
            reject(entry.path, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the stage
            from frugalml.errors import TransientStorageError

            if isinstance(exc, TransientStorageError):
                raise
            reject(entry.path, "unreadable", f"{exc.__class__.__name__}: {exc}")

    in_flight = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for entry in entries:
            if is_hidden(entry.path):
                hidden += 1
                continue
            label, split, reason, detail = classify_entry(entry, cfg.data.extensions)
            if reason:
                reject(entry.path, reason, detail)
                progress.update()
                continue
            old = by_source.get(entry.path)
            if (old and entry.stamp and old["source_stamp"] == entry.stamp and int(old["bytes"]) == entry.size
                    and old["label"] == label and (PREPARED / old["path"]).exists()):
                rows.append(dict(old))  # unchanged since the last ingest: not read or decoded again
                reused += 1
                progress.update()
                continue
            if len(in_flight) >= workers * 4:  # bounded: memory does not grow with the dataset
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
                progress.update(len(done))
            in_flight.add(pool.submit(task, entry, label, split))
            submitted += 1
        for f in in_flight:
            f.result()
        progress.update(len(in_flight))
    progress.close()

    rows, dup_rejects, duplicates = _dedupe(rows)
    rejected.extend(dup_rejects)
    if not rows:
        raise DataError(f"no usable images in {cfg.data.source} ({len(rejected)} files rejected); "
                        "images must sit in <class>/ folders")
    for r in rows:
        old = previous.get(r["sha256"])
        if old and old["label"] == r["label"] and not r["split"]:
            r["split"] = old["split"]  # an image keeps its split across re-ingests
        elif not r["split"]:
            r["split"] = split_from_hash(r["sha256"], cfg)

    keep = {r["path"] for r in rows}
    _prune(keep)
    write_manifest(rows)
    new = sum(1 for r in rows if r["sha256"] not in previous)
    gone = sum(1 for sha in previous if sha not in {r["sha256"] for r in rows})
    meter.add(labeled_images=new)
    report = _report(cfg, kind, rows, rejected, duplicates, hidden, new, gone)
    report["counts"]["decoded"] = submitted
    report["counts"]["reused_unchanged"] = reused
    atomic_write_json(REPORT, report)
    c = report["counts"]
    info(f"ingest: {c['images']} images in {c['classes']} classes "
         f"(train {c['per_split'].get('train', 0)}, val {c['per_split'].get('val', 0)}, "
         f"test {c['per_split'].get('test', 0)}); {c['new']} new, {c['removed']} removed, "
         f"{c['rejected']} rejected, {hidden} hidden files skipped; {c['decoded']} decoded, "
         f"{reused} unchanged files not read again")
    for reason, n in sorted(c["rejected_by_reason"].items()):
        info(f"  rejected {n} x {reason} (see {REPORT})")
    return IngestResult(c["images"], c["classes"], c["rejected"], new, gone)


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Identical content once: same label -> keep one; different labels -> ambiguous, drop all."""
    by_sha: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["source_path"]):
        by_sha.setdefault(r["sha256"], []).append(r)
    kept, rejects, dups = [], [], []
    for sha, group in by_sha.items():
        labels = {r["label"] for r in group}
        if len(labels) > 1:
            for r in group:
                rejects.append({"path": r["source_path"], "reason": "label_conflict",
                                "detail": f"same content labeled {sorted(labels)}"})
            continue
        kept.append(group[0])
        for r in group[1:]:
            dups.append({"path": r["source_path"], "duplicate_of": group[0]["source_path"]})
    return kept, rejects, dups


def _prune(keep: set[str]) -> int:
    """Remove prepared images no longer in the dataset (and any temp files of a killed run)."""
    removed = 0
    if not PREPARED.exists():
        return 0
    for p in PREPARED.rglob("*"):
        if p.is_file() and p.relative_to(PREPARED).as_posix() not in keep:
            p.unlink()
            removed += 1
    for d in sorted((d for d in PREPARED.rglob("*") if d.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return removed


def _report(cfg, kind, rows, rejected, duplicates, hidden, new, gone) -> dict:
    per_class: dict[str, int] = {}
    per_split: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for r in rows:
        per_class[r["label"]] = per_class.get(r["label"], 0) + 1
        per_split[r["split"]] = per_split.get(r["split"], 0) + 1
    for r in rejected:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    total_seen = len(rows) + len(rejected) + len(duplicates)
    return {
        "source": cfg.data.source,
        "source_kind": kind,
        "counts": {
            "images": len(rows), "classes": len(per_class), "per_class": dict(sorted(per_class.items())),
            "per_split": dict(sorted(per_split.items())), "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(by_reason.items())), "duplicates": len(duplicates),
            "hidden_skipped": hidden, "new": new, "removed": gone,
            "reject_ratio": round(len(rejected) / total_seen, 6) if total_seen else 0.0,
        },
        "rejected": sorted(rejected, key=lambda r: r["path"]),
        "duplicates": sorted(duplicates, key=lambda r: r["path"]),
    }


def main() -> None:
    from tasks._stage import stage_main

    stage_main("ingest", run)


if __name__ == "__main__":
    main()

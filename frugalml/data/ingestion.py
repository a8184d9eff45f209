"""Ingestion: a source of ``<class>/<image>`` files -> normalised images in shards + manifest.

``ingest(cfg, meter)`` reads ``data.source``, writes the shards under ``data/prepared/`` and
``data/manifest.csv`` (one row per image with the original attributes) and returns the
``IngestReport`` (counts and every file left out, with its reason); ``tasks/ingest.py`` writes
it. It never stops on one bad file. Splits come from ``train/``, ``val/``, ``test/`` folders when
the source has them, else from the content hash, and an image seen in an earlier ingest keeps
its split.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from frugalml.contracts import INGEST_REPORT, PREPARED, IngestReport, read_manifest, write_manifest
from frugalml.core.config import Params
from frugalml.core.console import Progress, info
from frugalml.core.costs import CostMeter
from frugalml.core.errors import DataError, TransientStorageError
from frugalml.core.store import Store, source_settings
from frugalml.data.builtin import materialize
from frugalml.data.images import ImageRejected, cap_side, decode, png_bytes
from frugalml.data.shards import ShardReader, ShardWriter
from frugalml.data.sources import Entry, FileTooLarge, describe, is_hidden, iter_archive, iter_folder, iter_s3

SPLIT_NAMES = ("train", "val", "test")
KEEP_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
BATCH = 512  # files per pool task, and per shard (or data.shard_mb of source bytes)


def split_from_hash(sha256: str, cfg: Params) -> str:
    x = int(sha256[:12], 16) / float(16**12)
    s = cfg.data.splits
    if x < s.train:
        return "train"
    if x < s.train + s.val:
        return "val"
    return "test"


def iter_source(cfg: Params) -> tuple[str, object]:
    src = cfg.data.source
    kind = describe(src)
    cap = cfg.data.max_file_bytes
    if kind == "builtin":
        return kind, iter_folder(materialize(src), cap)
    if kind == "s3":
        return kind, iter_s3(src, Store(source_settings(cfg.data.endpoint_url, cfg.storage)), cap)
    if kind == "archive":
        return kind, iter_archive(Path(src).expanduser(), cap)
    return kind, iter_folder(Path(src).expanduser(), cap)


def unsafe_name(parts: list[str]) -> str | None:
    """Why a source path cannot name a class and a file, or None. Names come from untrusted
    keys and archives; a class name becomes part of stored paths, so it must be one plain
    folder name."""
    for p in parts:
        if p in (".", ".."):
            return f"path component {p!r}"
        if "\\" in p or any(ord(ch) < 32 for ch in p):
            return f"backslash or control character in {p!r}"
    return None


def classify_entry(entry: Entry, extensions: list[str]) -> tuple[str | None, str | None, str | None, str]:
    """(label, split or None, reject reason or None, detail)."""
    parts = [p for p in entry.path.split("/") if p]
    split = None
    if len(parts) >= 3 and parts[0] in SPLIT_NAMES:
        split, parts = parts[0], parts[1:]
    if entry.problem:
        return None, split, entry.problem, entry.detail
    if len(parts) < 2:
        return None, split, "outside_class_folder", "files must sit in a <class>/ folder"
    if bad := unsafe_name(parts):
        return None, split, "unsafe_name", bad
    suffix = os.path.splitext(parts[-1])[1].lower()
    if suffix not in extensions:
        return parts[0], split, "unknown_extension", suffix or "(none)"
    if entry.size == 0:
        return parts[0], split, "empty", "zero bytes"
    return parts[0], split, None, ""


def _process(entry: Entry, label: str, split: str | None, max_pixels: int, max_side: int | None) -> tuple[dict, bytes]:
    """Read, hash, decode and normalise one file: (manifest row without location, bytes to store)."""
    try:
        data = entry.read()
    except FileTooLarge as exc:
        raise ImageRejected("too_large", str(exc)) from None
    except OSError as exc:
        raise ImageRejected("unreadable", str(exc)) from None
    sha = hashlib.sha256(data).hexdigest()
    rgb, attrs = decode(data, max_pixels)
    capped = cap_side(rgb, max_side)
    keep_original = attrs.pop("unchanged") and capped is rgb and attrs["format"] in KEEP_FORMATS
    # An upright RGB PNG/JPEG is stored as is: no re-encode, no generation loss.
    ext = KEEP_FORMATS[attrs["format"]] if keep_original else ".png"
    row = {
        "path": f"{label}/{sha[:32]}{ext}",
        "label": label,
        "split": split or "",
        "sha256": sha,
        "bytes": len(data),
        "source_path": entry.path,
        "source_stamp": entry.stamp,
        **attrs,
    }
    return row, (data if keep_original else png_bytes(capped))


def _work_batch(batch: list[tuple[Entry, str, str | None]], max_pixels: int, max_side: int | None, shard_stem: str):
    """Decode a batch in a pool worker (thread or process) and pack it into its own shard.

    Returns (manifest rows with their shard locations, rejects, files handled). Only the
    small rows travel back to the stage process, never the image bytes.
    """
    gc.disable()  # a batch allocates only acyclic dicts and bytes: the cyclic GC would just rescan them
    try:
        return _work_batch_inner(batch, max_pixels, max_side, shard_stem)
    finally:
        gc.enable()


def _work_batch_inner(batch, max_pixels, max_side, shard_stem):
    done, bad = [], []
    writer = ShardWriter(PREPARED, shard_stem, 1 << 62)
    for entry, label, split in batch:
        try:
            row, payload = _process(entry, label, split, max_pixels, max_side)
            row["shard"], row["offset"], row["length"] = writer.add(row["path"], payload)
            done.append(row)
        except ImageRejected as exc:
            bad.append({"path": entry.path, "reason": exc.reason, "detail": exc.detail})
        except TransientStorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the stage
            bad.append({"path": entry.path, "reason": "unreadable", "detail": f"{exc.__class__.__name__}: {exc}"})
    writer.close()
    return done, bad, len(batch)


@dataclass
class Scan:
    """What reading the source produced: rows (decoded or reused), rejections and counts."""

    rows: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    hidden: int = 0
    reused: int = 0
    submitted: int = 0


class _BoundedDecoder:
    """Batches of entries decoded by a pool, at most ``2 x workers`` batches in flight, so memory
    does not grow with the dataset. Each batch becomes one shard (``data.shard_mb`` at most)."""

    def __init__(self, pool, workers: int, cfg: Params, stem: str, scan: Scan, progress: Progress):
        self.pool, self.workers, self.stem, self.scan, self.progress = pool, workers, stem, scan, progress
        self.limits = (cfg.data.max_pixels, cfg.data.max_side)
        self.max_batch_bytes = cfg.data.shard_mb << 20
        self.in_flight: set = set()
        self.batch: list = []
        self.batch_bytes = self.n_batches = 0

    def add(self, entry: Entry, label: str, split: str) -> None:
        self.batch.append((entry, label, split))
        self.batch_bytes += entry.size
        self.scan.submitted += 1
        if len(self.batch) >= BATCH or self.batch_bytes >= self.max_batch_bytes:
            self.submit()

    def submit(self) -> None:
        self.drain(self.workers * 2)
        self.in_flight.add(self.pool.submit(_work_batch, self.batch, *self.limits, f"{self.stem}-{self.n_batches:05d}"))
        self.batch, self.batch_bytes, self.n_batches = [], 0, self.n_batches + 1

    def drain(self, limit: int) -> None:
        while len(self.in_flight) > limit:
            finished, self.in_flight = wait(self.in_flight, return_when=FIRST_COMPLETED)
            for f in finished:
                done, bad, n = f.result()
                self.scan.rows.extend(done)
                self.scan.rejected.extend(bad)
                self.progress.update(n)

    def finish(self) -> None:
        if self.batch:
            self.submit()
        self.drain(0)


def _unchanged(old: dict | None, entry: Entry, label: str) -> bool:
    return bool(
        old
        and entry.stamp
        and old["source_stamp"] == entry.stamp
        and int(old["bytes"]) == entry.size
        and old["label"] == label
    )


def _scan(cfg: Params, kind: str, entries, by_source: dict[str, dict]) -> Scan:
    """Read every entry: hidden ones skipped, bad ones rejected with a reason, unchanged ones
    reused from the last manifest, the rest decoded by a pool."""
    # Local sources: one decode process per core. S3 reads wait on the network: 8 threads.
    workers = cfg.data.workers or (8 if kind == "s3" else os.cpu_count() or 1)
    # Local files decode in worker processes (past the GIL); S3 and archive reads use threads.
    # Tar members arrive with their bytes (read in order by the listing thread), so they can
    # go to processes too; zip members are read by the pool from the shared ZipFile: threads.
    local = kind in ("folder", "builtin") or (kind == "archive" and not cfg.data.source.lower().endswith(".zip"))
    pool_cls = ProcessPoolExecutor if local and workers > 1 else ThreadPoolExecutor
    scan, progress = Scan(), Progress("ingest", None, "files")
    stem = time.strftime("shard-%Y%m%dT%H%M%S", time.gmtime())
    gc.disable()  # rows are acyclic; full GC passes over a growing list cost O(n) each
    with pool_cls(max_workers=workers) as pool:
        decoder = _BoundedDecoder(pool, workers, cfg, stem, scan, progress)
        for entry in entries:
            if is_hidden(entry.path):
                scan.hidden += 1
                continue
            label, split, reason, detail = classify_entry(entry, cfg.data.extensions)
            if reason:
                scan.rejected.append({"path": entry.path, "reason": reason, "detail": detail})
                progress.update()
            elif _unchanged(by_source.get(entry.path), entry, label):
                scan.rows.append(dict(by_source[entry.path]))  # not read or decoded again
                scan.reused += 1
                progress.update()
            else:
                decoder.add(entry, label, split)
        decoder.finish()
    gc.enable()
    progress.close()
    return scan


def _assign_splits(rows: list[dict], previous: dict[str, dict], cfg: Params) -> None:
    for r in rows:
        old = previous.get(r["sha256"])
        if old and old["label"] == r["label"] and not r["split"]:
            r["split"] = old["split"]  # an image keeps its split across re-ingests
        elif not r["split"]:
            r["split"] = split_from_hash(r["sha256"], cfg)


def log_summary(report: IngestReport) -> None:
    c = report.counts
    info(
        f"ingest: {c.images} images in {c.classes} classes "
        f"(train {c.per_split.get('train', 0)}, val {c.per_split.get('val', 0)}, "
        f"test {c.per_split.get('test', 0)}); {c.new} new, {c.removed} removed, "
        f"{c.rejected} rejected, {c.hidden_skipped} hidden files skipped; {c.decoded} decoded, "
        f"{c.reused_unchanged} unchanged files not read again"
    )
    for reason, n in sorted(c.rejected_by_reason.items()):
        info(f"  rejected {n} x {reason} (see {INGEST_REPORT})")


def ingest(cfg: Params, meter: CostMeter) -> IngestReport:
    old_rows = [r for r in read_manifest() if r.get("shard") and (PREPARED / r["shard"]).exists()]
    previous = {r["sha256"]: r for r in old_rows}
    by_source = {r["source_path"]: r for r in old_rows if r.get("source_stamp")}
    kind, entries = iter_source(cfg)
    info(f"ingest: reading {kind} source {cfg.data.source}")
    scan = _scan(cfg, kind, entries, by_source)
    rows, dup_rejects, duplicates = _dedupe(scan.rows)
    rejected = scan.rejected + dup_rejects
    if not rows:
        raise DataError(
            f"no usable images in {cfg.data.source} ({len(rejected)} files rejected); "
            "images must sit in <class>/ folders"
        )
    _assign_splits(rows, previous, cfg)
    shard_stats = _compact(rows, cfg)
    write_manifest(rows)
    new = sum(1 for r in rows if r["sha256"] not in previous)
    gone = sum(1 for sha in previous if sha not in {r["sha256"] for r in rows})
    meter.add(labeled_images=new)
    report = _report(cfg, kind, rows, rejected, duplicates, scan.hidden, new, gone)
    report["counts"]["decoded"] = scan.submitted
    report["counts"]["reused_unchanged"] = scan.reused
    report["shards"] = shard_stats
    return IngestReport.model_validate(report)


def _dedupe(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Identical content once: same label -> keep one; different labels -> ambiguous, drop all."""
    by_sha: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["source_path"]):
        by_sha.setdefault(r["sha256"], []).append(r)
    kept, rejects, dups = [], [], []
    for group in by_sha.values():
        labels = {r["label"] for r in group}
        if len(labels) > 1:
            for r in group:
                rejects.append(
                    {
                        "path": r["source_path"],
                        "reason": "label_conflict",
                        "detail": f"same content labeled {sorted(labels)}",
                    }
                )
            continue
        kept.append(group[0])
        for r in group[1:]:
            dups.append({"path": r["source_path"], "duplicate_of": group[0]["source_path"]})
    return kept, rejects, dups


def _compact(rows: list[dict], cfg: Params) -> dict:
    """Delete shards nothing points to and rewrite shards that are mostly garbage.

    Garbage is the data of images removed from the source (or rejected after they were
    stored). A shard whose live data is under half its size is rewritten with only the
    live members; the manifest rows are updated to the new locations.
    """
    live: dict[str, list[dict]] = {}
    for r in rows:
        live.setdefault(r["shard"], []).append(r)
    reader = ShardReader(PREPARED)
    writer = ShardWriter(PREPARED, time.strftime("shard-%Y%m%dT%H%M%S-c", time.gmtime()), cfg.data.shard_mb << 20)
    deleted = rewritten = 0
    for p in sorted(PREPARED.iterdir()) if PREPARED.exists() else []:
        if p.is_dir() or p.name not in live:  # stale shard, a killed run's .part, or an old layout
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            deleted += 1
            continue
        members = live[p.name]
        if sum(int(r["length"]) for r in members) < 0.5 * p.stat().st_size and p.name not in writer.written:
            moved = {}
            for r in sorted(members, key=lambda r: int(r["offset"])):
                key = (r["offset"], r["length"])
                if key not in moved:
                    moved[key] = writer.add(r["path"], reader.read_row(r))
                r["shard"], r["offset"], r["length"] = moved[key]
            rewritten += 1
    writer.close()
    for name in set(live) - {r["shard"] for r in rows}:  # shards whose live data moved
        (PREPARED / name).unlink(missing_ok=True)
    shards = sorted(p.name for p in PREPARED.glob("shard-*.tar"))
    return {"shards": len(shards), "deleted": deleted, "rewritten": rewritten}


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
            "images": len(rows),
            "classes": len(per_class),
            "per_class": dict(sorted(per_class.items())),
            "per_split": dict(sorted(per_split.items())),
            "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "duplicates": len(duplicates),
            "hidden_skipped": hidden,
            "new": new,
            "removed": gone,
            "reject_ratio": round(len(rejected) / total_seen, 6) if total_seen else 0.0,
        },
        "rejected": sorted(rejected, key=lambda r: r["path"]),
        "duplicates": sorted(duplicates, key=lambda r: r["path"]),
    }

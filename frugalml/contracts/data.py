"""The data stages' files: the manifest (CSV), ``metrics/ingest.json`` and ``metrics/validation.json``."""

from __future__ import annotations

import csv
import io
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from frugalml.contracts.base import INGEST_REPORT, MANIFEST, VALIDATION_REPORT, Contract
from frugalml.core.fsutil import atomic_write_text

MANIFEST_COLUMNS = [
    "path",
    "label",
    "split",
    "sha256",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "source_path",
    "source_stamp",
    "shard",
    "offset",
    "length",
]


def read_manifest(path: Path = MANIFEST) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_manifest(rows: list[dict], path: Path = MANIFEST) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    w.writerows([r.get(k, "") for k in MANIFEST_COLUMNS] for r in sorted(rows, key=itemgetter("label", "sha256")))
    atomic_write_text(path, buf.getvalue())


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    reason: str
    detail: str | None = None


class Duplicate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    duplicate_of: str


class IngestCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: int
    classes: int
    per_class: dict[str, int]
    per_split: dict[str, int]
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    hidden_skipped: int
    new: int
    removed: int
    reject_ratio: float
    decoded: int = 0
    reused_unchanged: int = 0


class ShardStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shards: int
    deleted: int
    rewritten: int


class IngestReport(Contract):
    """``metrics/ingest.json``: what the prepared dataset holds, and every file left out with its reason."""

    PATH: ClassVar[Path] = INGEST_REPORT
    source: str
    source_kind: str
    counts: IngestCounts
    rejected: list[Rejection]
    duplicates: list[Duplicate]
    shards: ShardStats | None = None

    def headline(self) -> dict[str, Any]:
        return {"images": self.counts.images, "new_images": self.counts.new, "rejected_images": self.counts.rejected}


class Expectation(BaseModel):
    """One Great Expectations check as the report shows it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    asset: str
    expectation: str
    column: str | None = None
    observed: Any = None  # a number, a set of values, or {unexpected_count, examples}
    threshold: str
    success: bool
    severity: Literal["fail", "warn"] = "fail"


class ValidationReport(Contract):
    PATH: ClassVar[Path] = VALIDATION_REPORT
    success: bool
    images: int
    expectations: list[Expectation]
    failed: list[str]
    warnings: list[str]
    label_distribution: dict[str, float]
    drift_reference: dict | None = None
    html_report: str

    def headline(self) -> dict[str, Any]:
        return {"validation": "passed" if self.success else "failed", "validation_warnings": len(self.warnings)}

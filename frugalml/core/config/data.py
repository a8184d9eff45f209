"""``data`` and ``validate``: where the labeled images come from, how they are prepared and split,
and what the data must satisfy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from frugalml.core.config.base import BUILTIN_NAMES, _Strict


class Splits(_Strict):
    train: float = Field(0.7, gt=0, lt=1)
    """share of the images in the train split, drawn from each image's content hash (the three sum to 1; an image keeps
    its split across re-ingests)
    """
    val: float = Field(0.15, ge=0, lt=1)
    """share in the validation split (early stopping, int8 calibration)"""
    test: float = Field(0.15, gt=0, lt=1)
    """share in the test split (the gates' figures)"""

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class DataConfig(_Strict):
    source: str = "s3://frugalml/sources/shapes"
    """labeled images: `s3://bucket/prefix`, a local folder, a `.zip`/`.tar`/`.tar.gz`, or a generated dataset,
    `builtin:digits` or `builtin:shapes` (see Built-in datasets). The class is the top folder (`<class>/<image>`),
    optionally below `train/`, `val/`, `test/`
    """
    splits: Splits = Splits()
    """train / val / test fractions (below)"""
    extensions: list[str] = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
    """accepted file extensions; others are rejected as `unknown_extension`"""
    max_side: int | None = Field(None, gt=0)
    """cap the longest side of prepared images (pixels)"""
    max_pixels: int = Field(89_478_485, gt=0)
    """larger images are rejected as `decompression_bomb`"""
    workers: int = Field(0, ge=0)
    """decode workers; 0 = one process per core for local folders, 8 threads for S3 and archives (reads wait on the
    network or the archive)
    """
    shard_mb: int = Field(256, ge=1)
    """prepared images are packed into `data/prepared/shard-*.tar` files of about this size (many small files make DVC
    slow)
    """
    max_file_bytes: int = Field(100_000_000, gt=0)
    """a source file larger than this is rejected (reason `too_large`); the cap holds while reading, so a lying archive
    header or a huge S3 object never lands in memory
    """
    endpoint_url: str | None = None
    """S3 endpoint of an `s3://` source on another server (credentials from `AWS_ACCESS_KEY_ID` /
    `AWS_SECRET_ACCESS_KEY`); null reads it from the pipeline's own store
    """

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must name a source: s3://bucket/prefix, a local folder, an archive, or builtin:<name>")
        if v.startswith("builtin:") and v[len("builtin:") :] not in BUILTIN_NAMES:
            raise ValueError(
                f"unknown built-in dataset {v!r}; choose one of " + ", ".join(f"builtin:{n}" for n in BUILTIN_NAMES)
            )
        return v

    @field_validator("extensions")
    @classmethod
    def _lower_ext(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]


class ValidateConfig(_Strict):
    expected_classes: list[str] | None = None
    """exact class set required; null accepts any"""
    min_images_per_class: int = Field(10, ge=1)
    """fewest images a class may have"""
    max_imbalance_ratio: float = Field(20.0, ge=1)
    """largest class / smallest class"""
    max_reject_ratio: float = Field(0.05, ge=0, le=1)
    """rejected files / files seen in the source"""
    max_label_drift: float = Field(0.15, ge=0, le=1)
    """largest total variation distance (half the sum of absolute share differences) between this dataset's label
    distribution and the last validated one, kept at `validation/<model.name>/last.json` in the bucket
    """
    drift_action: Literal["warn", "fail"] = "warn"
    """`warn` reports a drift above the limit; `fail` rejects the run (exit 3)"""
    max_label_issue_ratio: float | None = Field(None, ge=0, le=1)
    """the share of labels the label audit (`frugalml labels audit`: cleanlab on k-fold out-of-sample probabilities)
    may flag; null = not checked. When set, validation runs the audit: a backbone pass over every image (cached by
    content) and a few seconds of fitting. It uses `model.*` as they are when validation runs (changing them does
    not re-run validation)
    """
    label_issue_action: Literal["warn", "fail"] = "warn"
    """`warn` or `fail` when the label issue ratio is above the maximum"""
    min_width: int = Field(1, ge=1)
    """narrowest original image accepted (pixels)"""
    min_height: int = Field(1, ge=1)
    """lowest original image accepted (pixels)"""
    max_width: int = Field(20_000, ge=1)
    """widest original image accepted (pixels)"""
    max_height: int = Field(20_000, ge=1)
    """tallest original image accepted (pixels)"""
    allowed_modes: list[str] = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]
    """allowed original PIL modes"""

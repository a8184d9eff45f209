"""Where every file that crosses a process boundary lives, the stage list, the base of the JSON
contracts (``Contract``: read, write, validate) and safe ids (untrusted names never become paths)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from frugalml.core.errors import ConfigError, DataError
from frugalml.core.fsutil import atomic_write_json

STAGES = ("ingest", "validate", "train", "evaluate", "compress", "gate", "package")  # the order of dvc.yaml


PREPARED = Path("data/prepared")


MANIFEST = Path("data/manifest.csv")


INGEST_REPORT = Path("metrics/ingest.json")


VALIDATION_REPORT = Path("metrics/validation.json")


VALIDATION_HTML = Path("reports/validation")


MODEL = Path("models/model.pt")


VARIANTS_DIR = Path("models/variants")  # ONNX and int8 variants of MODEL (the compress stage)


TRAIN_REPORT = Path("metrics/train.json")


TRAIN_CURVES = Path("plots/train.csv")


EVAL_REPORT = Path("metrics/eval.json")


CONFUSION_CSV = Path("plots/confusion.csv")


CONFUSION_PNG = Path("plots/confusion.png")


VARIANTS_CSV = Path("plots/variants.csv")  # a DVC plot: accuracy vs USD per 1k per variant


VARIANTS_PNG = Path("plots/variants.png")


GATE_REPORT = Path("metrics/gate.json")


PACKAGE_REPORT = Path("metrics/package.json")


COSTS_DIR = Path("costs")


HEADLINE_DIR = Path("metrics/headline")  # the few figures per stage that `dvc exp show` lists


COST_METRICS = Path("metrics/costs.json")  # the bill per stage and in total, ditto


STATUS_DIR = Path(".frugalml") / "status"


def cost_file(stage: str) -> Path:
    return COSTS_DIR / f"{stage}.json"


def status_file(stage: str) -> Path:
    return STATUS_DIR / f"{stage}.json"


def headline_file(stage: str) -> Path:
    return HEADLINE_DIR / f"{stage}.json"


M = TypeVar("M", bound="Contract")


class Contract(BaseModel):
    """A JSON file with a fixed place: ``Model.read()`` / ``model.write()`` (atomic)."""

    model_config = ConfigDict(extra="forbid")
    PATH: ClassVar[Path]

    @classmethod
    def read(cls: type[M], path: Path | None = None) -> M:
        path = path or cls.PATH
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise DataError(f"{path} is missing: run the stage that writes it first") from None
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise DataError(f"{path} is not a valid {cls.__name__} ({fields})") from None
        except ValueError as exc:
            raise DataError(f"{path} is not a valid {cls.__name__}: {str(exc).splitlines()[0]}") from None

    @classmethod
    def read_if_exists(cls: type[M], path: Path | None = None) -> M | None:
        return cls.read(path) if Path(path or cls.PATH).exists() else None

    def write(self, path: Path | None = None) -> Path:
        path = Path(path or self.PATH)
        atomic_write_json(path, self.model_dump(mode="json", exclude_none=True))  # absent = None on read
        return path

    def headline(self) -> dict[str, Any]:
        """The few figures of this report that ``dvc exp show`` lists (``metrics/headline/<stage>.json``).

        The keys are unique across stages, so DVC shows them without a file prefix; the full
        report stays in its own file (a DVC out, not a metric: its 100+ fields would be columns).
        """
        return {}


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def is_safe_id(value: str) -> bool:
    return bool(_SAFE_ID.fullmatch(value))


def safe_id(value: str, what: str, example: str) -> str:
    """``value`` if it is an id (letters, digits, ``-``, ``_``): ids typed by users or read from the
    bucket name folders here and keys there, so anything else (``..``, ``/``) is refused, never
    made a path."""
    if not is_safe_id(value):
        raise ConfigError(f"{value!r} is not {what} (letters, digits, - and _; e.g. {example})")
    return value

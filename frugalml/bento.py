"""BentoML packaging: model store, bento build, export and import.

The BentoML home (model and bento store) is ``.frugalml/bentoml`` in the workspace unless
``$BENTOML_HOME`` is set; call ``use_workspace_home`` before bentoml is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

SERVICE = "frugalml.serving.service:Classifier"
BENTO_INCLUDE = [
    "frugalml/__init__.py",
    "frugalml/errors.py",
    "frugalml/images.py",
    "frugalml/modeling.py",
    "frugalml/serving/__init__.py",
    "frugalml/serving/service.py",
]


def use_workspace_home(root: str | os.PathLike = ".") -> Path:
    home = Path(os.environ.get("BENTOML_HOME") or Path(root).resolve() / ".frugalml" / "bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    home.mkdir(parents=True, exist_ok=True)
    return home


def package_root() -> Path:
    """The folder that holds the ``frugalml`` package (the bento's build context)."""
    return Path(__file__).resolve().parent.parent


def save_model(name: str, version: str, model_file: Path, info: dict, onnx_file: Path | None = None) -> str:
    """The BentoML model: ``model.pt`` (classes, transforms; the fp32 weights), ``model.onnx``
    when the chosen variant runs on ONNX Runtime, and the registry record as ``frugalml.json``."""
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    tag = f"{name}:{version}"
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    labels = {"run_id": str(info.get("run_id", "")), "gate": str(info.get("gate", {}).get("decision", ""))}
    with bentoml.models.create(tag, labels=labels, metadata=_metadata(info)) as ref:
        shutil.copyfile(model_file, ref.path_of("model.pt"))
        if onnx_file is not None:
            shutil.copyfile(onnx_file, ref.path_of("model.onnx"))
        Path(ref.path_of("frugalml.json")).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return tag


def _metadata(value):
    """BentoML metadata takes basic types only: None becomes "" (the full record is in frugalml.json)."""
    if isinstance(value, dict):
        return {str(k): _metadata(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_metadata(v) for v in value]
    return "" if value is None else value


def build_bento(name: str, version: str, model_tag: str, serving) -> str:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    tag = f"{name}:{version}"
    try:
        return str(bentoml.bentos.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    bento = bentoml.bentos.build(
        SERVICE,
        name=name,
        version=version,
        build_ctx=str(package_root()),
        include=BENTO_INCLUDE,
        labels={"frugalml": "true"},
        python={"packages": ["torch", "torchvision", "pillow", "pydantic", "onnxruntime"], "lock_packages": False},
        args={
            "model_tag": model_tag,
            "max_image_bytes": serving.max_image_bytes,
            "max_image_pixels": serving.max_image_pixels,
            "max_images_per_request": serving.max_images_per_request,
            "top_k": serving.top_k,
        },
    )
    return str(bento.tag)


def export_bento(tag: str, dest: Path) -> Path:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)

    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:12]}.part.bento")  # unique: concurrent exports
    try:
        out = Path(bentoml.export_bento(tag, str(tmp)))
        os.replace(out, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def import_bento(path: Path) -> str:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    return str(bentoml.import_bento(str(Path(path).resolve())).tag)  # fsspec needs absolute paths


def has_bento(tag: str) -> bool:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    try:
        bentoml.bentos.get(tag)
        return True
    except bentoml.exceptions.NotFound:
        return False


def matches_archive(tag: str, archive: Path) -> bool:
    """True when every file of the exported ``archive`` is in the local store's bento, byte for byte."""

    import bentoml  # lazy: BentoML: its submodules load the serving stack

    root = Path(bentoml.bentos.get(tag).path)
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            local = root / m.name
            if ".." in Path(m.name).parts or not local.is_file():
                return False
            f = tf.extractfile(m)
            if hashlib.sha256(f.read()).digest() != hashlib.sha256(local.read_bytes()).digest():
                return False
    return True


def delete_bento(tag: str) -> None:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    bentoml.bentos.delete(tag)

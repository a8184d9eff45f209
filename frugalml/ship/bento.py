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

SERVICE = "frugalml.ship.serving.service:Classifier"


def service_files(root: Path | None = None) -> list[str]:
    """What the bento carries: the service's module and every project module it imports,
    transitively (package ``__init__`` files included), as paths relative to ``root``. A bento's
    ``src/`` comes first on the serving process's path: a module it lacks under a package it
    holds cannot be found anywhere else."""
    import ast

    root = root or package_root()
    todo, seen = [SERVICE.split(":")[0]], set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # each package on the way, and the module itself
            base = root.joinpath(*parts[:i])
            for f in (base / "__init__.py", base.with_suffix(".py")):
                if f.is_file() and f not in seen:
                    seen.add(f)
                    for node in ast.walk(ast.parse(f.read_text())):
                        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                            todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                        elif isinstance(node, ast.Import):
                            todo += [a.name for a in node.names]
            todo = [m for m in todo if m.split(".")[0] == "frugalml"]
    return sorted(f.relative_to(root).as_posix() for f in seen)


def use_workspace_home(root: str | os.PathLike = ".") -> Path:
    home = Path(os.environ.get("BENTOML_HOME") or Path(root).resolve() / ".frugalml" / "bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    home.mkdir(parents=True, exist_ok=True)
    return home


def package_root() -> Path:
    """The folder that holds the ``frugalml`` package (the bento's build context)."""
    return Path(__file__).resolve().parents[2]


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
        include=service_files(),
        labels={"frugalml": "true"},
        python={
            # what the service and the modules it carries import (the config: PyYAML, ruamel.yaml)
            "packages": ["torch", "torchvision", "timm", "pillow", "pydantic", "onnxruntime", "pyyaml", "ruamel.yaml"],
            "lock_packages": False,
        },
        args={
            "model_tag": model_tag,
            "max_image_bytes": serving.max_image_bytes,
            "max_image_pixels": serving.max_image_pixels,
            "max_images_per_request": serving.max_images_per_request,
            "top_k": serving.top_k,
        },
    )
    return str(bento.tag)


# The archive is a plain tar. BentoML's default ``.bento`` is tar.xz, and a bento is mostly
# float weights, which do not compress: on the demo's bento (resnet18 with its ONNX and int8
# variants) xz took 64.8 s of CPU for 82.4 MB, gzip 5.3 s for 83.0 MB, plain tar 0.6 s for 89.7 MB.
EXPORT_FORMAT = "tar"
_MAGIC = {b"\xfd7zXZ\x00": "bento", b"\x1f\x8b": "gz"}  # "bento": BentoML's name for tar.xz


def archive_format(path: Path) -> str:
    """The format of an exported bento, from its first bytes (earlier versions were tar.xz)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((fmt for magic, fmt in _MAGIC.items() if head.startswith(magic)), "tar")


def export_bento(tag: str, dest: Path) -> Path:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)

    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:12]}.part.tar")  # unique: concurrent exports
    try:
        out = Path(bentoml.export_bento(tag, str(tmp), output_format=EXPORT_FORMAT))
        os.replace(out, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def import_bento(path: Path) -> str:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    path = Path(path).resolve()  # fsspec needs absolute paths
    return str(bentoml.import_bento(str(path), input_format=archive_format(path)).tag)


def has_bento(tag: str) -> bool:
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    try:
        bentoml.bentos.get(tag)
        return True
    except bentoml.exceptions.NotFound:
        return False


def _model_file(models: Path, parts: tuple[str, ...]) -> Path | None:
    """Where the model store keeps an archive's ``models/<name>/<version>/...`` file (None: the
    store's own ``latest`` pointer, which may name any version)."""
    inner = parts[1:]
    return None if len(inner) == 2 and inner[1] == "latest" else models.joinpath(*inner)


def matches_archive(tag: str, archive: Path) -> bool:
    """True when every file of the exported ``archive`` is in the local store, byte for byte: the
    bento's own files, and its models (imported into the model store, not the bento's folder)."""

    import bentoml  # lazy: BentoML: its submodules load the serving stack

    root = Path(bentoml.bentos.get(tag).path)
    models = Path(os.environ["BENTOML_HOME"]) / "models"
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            parts = Path(m.name).parts  # "./models/x" -> ("models", "x")
            if ".." in parts:
                return False
            local = _model_file(models, parts) if parts[0] == "models" else root.joinpath(*parts)
            if local is None:
                continue
            if not local.is_file():
                return False
            f = tf.extractfile(m)
            if hashlib.sha256(f.read()).digest() != hashlib.sha256(local.read_bytes()).digest():
                return False
    return True


def delete_bento(tag: str, archive: Path | None = None) -> None:
    """Delete a bento from the local store, and the models ``archive`` holds (an import keeps a
    model already in the store as it is: a damaged one would stay)."""
    import bentoml  # lazy: BentoML: its submodules load the serving stack

    bentoml.bentos.delete(tag)
    if archive is None:
        return
    with tarfile.open(archive, "r:*") as tf:
        tags = {f"{p[1]}:{p[2]}" for p in (Path(n).parts for n in tf.getnames()) if len(p) > 3 and p[0] == "models"}
    for model in sorted(tags):
        try:
            bentoml.models.delete(model)
        except bentoml.exceptions.NotFound:
            pass

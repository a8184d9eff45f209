"""``frugalml weights``: pretrained backbone weights and the team mirror."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from frugalml.cli.common import _cfg, _store, app
from frugalml.core.console import err
from frugalml.model import weights

weights_app = typer.Typer(no_args_is_help=True, help="Pretrained backbone weights and the team mirror in the store.")
app.add_typer(weights_app, name="weights")


@weights_app.command("add")
def weights_add(
    file: Path = typer.Argument(..., help="A weights file you have (.pth or .safetensors)."),
    arch: str = typer.Option(..., "--arch", help="The architecture it is for: resnet18, timm/tf_efficientnet_lite0..."),
) -> None:
    """Put a weights file into the team mirror (weights/<arch>/<file>), checked against the
    pinned sha256 (packaged weights) or the published hash prefix, and the architecture, first."""

    cfg = _cfg()
    uri, digest = weights.add_to_mirror(_store(cfg), arch, file, cfg.model.weights_url)
    err.print(f"added {file} to the mirror: {uri} (sha256 {digest})")


@weights_app.command("fetch")
def weights_fetch(arch: Optional[str] = typer.Option(None, "--arch", help="Default: model.arch.")) -> None:
    """Resolve the ImageNet weights as a training run would (cache, mirror, installed package,
    download) and mirror them: run once where they can be had, and every worker reads them from the store."""

    cfg = _cfg()
    arch = arch or cfg.model.arch
    kind = "torchvision" if cfg.model.pretrained == "torchvision" and arch == cfg.model.arch else "imagenet"
    found = weights.resolve(arch, store=_store(cfg), url_override=cfg.model.weights_url, kind=kind)
    print(json.dumps({**found.lineage(), "path": str(found.path), "mirror_uri": found.mirror_uri}, indent=2))


@weights_app.command("list")
def weights_list() -> None:
    """The weights files in the team mirror, and whether this machine's cache has each."""

    rows = weights.listing(_store())
    if not rows:
        err.print("the mirror holds no weights yet (see `frugalml weights add` / `frugalml weights fetch`)")
    for r in rows:
        print(
            f"{r['arch']:<28} {r['file']:<40} {r['bytes'] / 1e6:8.1f} MB  "
            f"{'cached here' if r['in_local_cache'] else ''}"
        )

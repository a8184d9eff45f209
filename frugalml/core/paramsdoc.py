"""params.yaml and the docs' params reference, both written from the config models.

Each key's description lives once, as the docstring under the key in ``frugalml/core/config/``;
this module shows it where users read it: the comments of ``params.yaml`` (the repo's file is
this module's output, and a test keeps it so) and the params reference page of the docs.

    python -m frugalml.core.paramsdoc --write     # rewrite params.yaml from the models' defaults
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel

from frugalml.core.config import PARAMS_FILE, Params

HEADER = """\
# frugalml pipeline parameters: every section with its defaults. Written from the config models
# (frugalml/core/config/, where each key is described once) by `python -m frugalml.core.paramsdoc --write`;
# the docs' params reference shows the same descriptions. DVC tracks each section as a stage
# parameter; `frugalml run --set KEY=VALUE` changes a value here and keeps these comments.
"""


@dataclass
class Key:
    path: str  # dotted, as --set takes it
    default: object  # as params.yaml holds it (JSON types)
    description: str
    section: bool  # a nested model: its keys follow


def keys(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[Key]:
    """Every key of ``model``, depth first, in the order of the model's fields."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        desc = " ".join((field.description or "").split())
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield Key(path, None, desc, True)
            yield from keys(ann, path + ".")
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json", by_alias=True)
            yield Key(path, _plain(default), desc, False)


def _plain(value):
    """JSON types: tuples as lists, models as dicts."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def yaml_value(value) -> str:
    """One value in YAML flow style, as it stands after ``key: ``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def params_yaml() -> str:
    """params.yaml with every key at its default and its description as the comment above it."""
    lines = [HEADER.rstrip("\n")]
    for k in keys():
        depth = k.path.count(".")
        indent = "  " * depth
        name = k.path.rsplit(".", 1)[-1]
        if depth == 0:
            lines.append("")
        for line in textwrap.wrap(k.description, width=100 - len(indent), break_on_hyphens=False):
            lines.append(f"{indent}# {line}")
        lines.append(f"{indent}{name}:" if k.section else f"{indent}{name}: {yaml_value(k.default)}")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The docs' params reference: one table per section (a nested section gets its own)."""
    sections: dict[str, list[Key]] = {}
    described: dict[str, str] = {}
    for k in keys():
        if k.section:
            sections.setdefault(k.path, [])
            described[k.path] = k.description
        else:
            sections.setdefault(k.path.rpartition(".")[0], []).append(k)
    out: list[str] = []
    for section, rows in sections.items():
        out += ["", f"## `{section}`", "", described.get(section, ""), ""]
        if not rows:
            continue
        out += ["| key | default | description |", "|---|---|---|"]
        for k in rows:
            default = yaml_value(k.default).replace("|", "\\|")
            desc = k.description.replace("|", "\\|")
            out.append(f"| `{k.path.rpartition('.')[2]}` | `{default}` | {desc} |")
    return "\n".join(out).lstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {PARAMS_FILE} from the models' defaults")
    ap.add_argument("--markdown", action="store_true", help="print the params reference (Markdown)")
    args = ap.parse_args(argv)
    if args.write:
        Path(PARAMS_FILE).write_text(params_yaml())
        print(f"wrote {PARAMS_FILE}", file=sys.stderr)
    elif args.markdown:
        sys.stdout.write(reference_markdown())
    else:
        sys.stdout.write(params_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The layering is a test: no import runs up the layers (lazy imports inside functions included).

    core, contracts  <  data  <  model  <  ship  <  decide  <  runs  <  tasks  <  flows  <  cli

A package may import its own modules and any package to its left; the packages of ``frugalml``
(all but the CLI) never import Prefect, ``tasks`` or ``flows``. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    ("frugalml.core", "frugalml.contracts"),
    ("frugalml.data",),
    ("frugalml.model",),
    ("frugalml.ship",),
    ("frugalml.decide",),
    ("frugalml.runs",),
    ("tasks",),
    ("flows",),
    ("frugalml.cli",),
]
NEVER_BELOW_TASKS = ("prefect", "tasks", "flows")  # what the frugalml packages never import


def layer_of(module: str) -> int | None:
    if module in ("frugalml", "tasks._stage"):  # the empty root package; the stages' shared adapter code
        return 0 if module == "frugalml" else LAYERS.index(("tasks",))
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth, relative ones resolved."""
    pkg = path.relative_to(root).parent.as_posix().replace("/", ".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # from frugalml.ship import gates: frugalml.ship.gates (a name may be a module or an attribute)
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for top in ("frugalml", "tasks", "flows"):
        for path in sorted((root / top).rglob("*.py")):
            module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
            own = layer_of(module)
            if own is None:
                bad.append(f"{path.relative_to(root)}: in no layer (add its package to LAYERS)")
                continue
            for line, imported in imports_of(path, root):
                where = f"{path.relative_to(root)}:{line} imports {imported}"
                if own < layer_of("tasks") and imported.split(".")[0] in NEVER_BELOW_TASKS:
                    bad.append(f"{where}: the frugalml packages never import Prefect, tasks or flows")
                    continue
                theirs = layer_of(imported)
                if theirs is not None and theirs > own:
                    bad.append(f"{where}: up the layers ({LAYERS[own][0]} may import only what is left of it)")
    return bad


def test_no_import_runs_up_the_layers():
    assert violations(ROOT) == []


def test_every_package_says_what_it_owns_and_may_import():
    for pkg in ("core", "data", "model", "ship", "decide", "runs", "contracts", "cli"):
        doc = ast.get_docstring(ast.parse((ROOT / "frugalml" / pkg / "__init__.py").read_text()))
        assert doc and len(doc) > 80, pkg
        if pkg not in ("contracts", "cli"):
            assert "Imports:" in doc, pkg


def test_the_check_finds_an_upward_import_a_lazy_one_and_prefect(tmp_path):
    """The checker itself, on a planted tree: each kind of violation is found, a legal tree passes."""
    for pkg in ("frugalml", "frugalml/core", "frugalml/data", "frugalml/ship", "tasks", "flows"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "frugalml/core/store.py").write_text("import os\n")
    (tmp_path / "frugalml/data/ingest.py").write_text("from frugalml.core import store\nfrom . import ingest\n")
    (tmp_path / "tasks/ingest.py").write_text("from frugalml.data import ingest\n")
    (tmp_path / "flows/pipeline.py").write_text("import prefect\nfrom tasks import ingest\n")
    assert violations(tmp_path) == []
    (tmp_path / "frugalml/core/store.py").write_text("def f():\n    from frugalml.ship import gates\n")
    (tmp_path / "frugalml/data/ingest.py").write_text("from frugalml import ship\n")
    (tmp_path / "frugalml/ship/gates.py").write_text("def g():\n    import prefect\n")
    (tmp_path / "frugalml/odd.py").write_text("")
    found = violations(tmp_path)
    assert len(found) == 4, found
    assert any("core/store.py:2 imports frugalml.ship.gates: up the layers" in v for v in found)
    assert any("data/ingest.py:1 imports frugalml.ship: up the layers" in v for v in found)
    assert any("ship/gates.py:2 imports prefect: the frugalml packages never import" in v for v in found)
    assert any("frugalml/odd.py: in no layer" in v for v in found)

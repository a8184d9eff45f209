"""The documentation site builds with --strict (a broken link, a missing page or an unknown
anchor fails), and its generated pages hold what the code holds."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_build_strict_with_the_generated_references(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    from frugalml.core import paramsdoc

    params = (site / "params.html").read_text()
    assert all(k.path.rpartition(".")[2] in params for k in paramsdoc.keys())  # every key, from the models
    assert "orchestration.pools" not in params and "<code>pool_spot_usd_per_hour</code>" in params
    commands = (site / "commands.html").read_text()
    for command in ("frugalml sweep", "frugalml labels import", "frugalml weights add", "frugalml storage up"):
        assert command in commands, command
    for page in site.glob("*.html"):  # offline: no web font, no script or style from elsewhere
        html = page.read_text()
        assert "fonts.googleapis" not in html and '<script src="http' not in html, page.name
    assert not (site / "hooks.py").exists()
    # every page of docs/ is in the navigation: a page the README links to cannot be orphaned
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(p.name in nav for p in (ROOT / "docs").glob("*.md"))

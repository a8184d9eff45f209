"""MkDocs hooks: the generated parts of the docs, rendered at build time from the code itself.

- ``<!-- frugalml:params-reference -->``: every params.yaml key with its default and description,
  from the config models (``frugalml.core.paramsdoc``);
- ``<!-- frugalml:command-reference -->``: the help of every command, from the CLI.

Nothing generated is committed, so nothing can drift from the code.
"""

from __future__ import annotations

import os


def _commands() -> str:
    import typer
    from typer.testing import CliRunner

    from frugalml.cli import app

    def walk(cmd, path):
        yield path
        for name in sorted(getattr(cmd, "commands", {}) or {}):
            yield from walk(cmd.commands[name], [*path, name])

    runner, out = CliRunner(), []
    env = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
    for path in walk(typer.main.get_command(app), []):
        res = runner.invoke(app, [*path, "--help"], prog_name="frugalml", env=env)
        if res.exit_code != 0:
            raise RuntimeError(f"frugalml {' '.join(path)} --help exited {res.exit_code}: {res.output}")
        title = "frugalml " + " ".join(path) if path else "frugalml"
        text = "\n".join(line.rstrip() for line in res.output.strip("\n").splitlines())
        out += [f"### `{title}`", "", "```text", text, "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    os.environ.setdefault("FRUGALML_DOCS_BUILD", "1")
    if "<!-- frugalml:params-reference -->" in markdown:
        from frugalml.core.paramsdoc import reference_markdown

        markdown = markdown.replace("<!-- frugalml:params-reference -->", reference_markdown())
    if "<!-- frugalml:command-reference -->" in markdown:
        markdown = markdown.replace("<!-- frugalml:command-reference -->", _commands())
    return markdown

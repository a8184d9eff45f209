"""The app every command group registers on, the shared helpers (config, store), and the one place
errors become exit codes and one-line messages (``main``)."""

from __future__ import annotations

import sys

import typer

from frugalml.core import config
from frugalml.core.console import err, fast_exit
from frugalml.core.errors import FrugalError
from frugalml.core.store import Store

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Cost-aware MLOps pipeline for image classification."
)


_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    _state["debug"] = debug


def _cfg(overrides: list[str] | None = None):
    return config.load(overrides=overrides)


def _store(cfg=None):
    cfg = cfg or _cfg()
    return Store.from_config(cfg.storage)


def _usd(v: float) -> str:
    return f"{v:.2f}" if v >= 1 else f"{v:.5f}"


def _is_click_error(exc: Exception) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return "ClickException" in names and hasattr(exc, "show")


def main() -> None:
    try:
        rv = app(standalone_mode=False)
        if "flows.pipeline" in sys.modules and rv in (None, 0):
            fast_exit(0)
        sys.exit(rv if isinstance(rv, int) else 0)
    except FrugalError as exc:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        if "flows.pipeline" in sys.modules:
            fast_exit(exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        if _is_click_error(exc):  # typer vendors its own click: match by class, not by module
            exc.show()  # the usage line and the message, like any command line tool
            sys.exit(exc.exit_code if isinstance(getattr(exc, "exit_code", None), int) else 2)
        if _state["debug"]:
            raise
        err.print(f"[bold red]unexpected error:[/bold red] {exc.__class__.__name__}: {exc} (rerun with --debug)")
        sys.exit(1)

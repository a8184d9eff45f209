"""The ``frugalml`` command line: one module per command group, each a thin layer over the core.

Exit codes: 0 success; 2 usage or configuration error; 3 the pipeline ran and rejected
(validation failed, gate rejected); 1 an unexpected failure. Errors print one readable
message; ``--debug`` shows the traceback too (``common.main``).

A command group registers itself on ``common.app`` when its module is imported (below).
"""

from frugalml.cli import (  # noqa: F401  (each registers its commands on the app)
    costs,
    data,
    labels,
    models,
    report,
    reproduce,
    run,
    schedule,
    serve,
    storage,
    sweep,
    weights,
)
from frugalml.cli.common import app, main

__all__ = ["app", "main"]

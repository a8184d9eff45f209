"""A Prefect API server for the length of one ``frugalml run`` when no server is configured.

Prefect would otherwise start its own temporary server when the flow begins, after the
run's own checks, importing the server application into the run's process first. This
one is started as the run begins, so it comes up while ``dvc status`` runs, and it is
stopped without waiting for its shutdown. It is what Prefect's temporary server is (the
same application, ephemeral mode, the database under PREFECT_HOME, bound to 127.0.0.1).

This module does not import Prefect: it only starts a process.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from frugalml.core.errors import FrugalError


class LocalPrefectServer:
    def __init__(self, log_path: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # SQLite "database is locked" retries are logged with tracebacks though the run goes on
            "PREFECT_SERVER_LOGGING_LEVEL": os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL"),
            "PREFECT_SERVER_DATABASE_TIMEOUT": os.environ.get("PREFECT_SERVER_DATABASE_TIMEOUT", "30"),
        }
        env.pop("PREFECT_API_URL", None)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.api_url = f"http://127.0.0.1:{port}/api"
        atexit.register(self.stop)  # registered before Prefect's own exit handlers, so it runs after them

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until the API answers. It runs Prefect's database migrations first: seconds on a quiet
        machine, and once over 90 s on a 2-core CI box beside a pip install and a training."""
        deadline = time.monotonic() + timeout_s
        why = f"not ready after {timeout_s:.0f} s"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                why = f"it exited with code {self.proc.returncode}"
                break
            try:
                with urllib.request.urlopen(self.api_url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise FrugalError(
            f"the local Prefect server did not start: {why} (see {self.log_path}); "
            f"set PREFECT_API_URL to use a running one.\n{tail}"
        )

    def stop(self) -> None:
        """SIGTERM; the server finishes its shutdown on its own (SQLite keeps the database whole)."""
        if self.proc.poll() is None:
            self.proc.terminate()

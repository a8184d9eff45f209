"""Run a registered model with ``bentoml serve``, optionally following an alias.

Without ``follow`` the bento's own server listens on host:port. With ``follow`` a small
reverse proxy listens there instead and forwards to a ``bentoml serve`` backend on a private
port. When the alias moves, the new version's backend is started and must answer
``/readyz`` before the proxy switches to it; the old backend is stopped only after its
in-flight requests have finished, so a switch drops no request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from frugalml import bento
from frugalml.console import info
from frugalml.errors import FrugalError
from frugalml.registry import Registry

HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}


def ensure_bento(reg: Registry, version: str) -> str:
    """The version's bento in the local BentoML store, fetched from S3 (sha256 checked) when missing."""
    record = reg.get(version)
    tag = record["bento_tag"]
    if bento.has_bento(tag):
        return tag
    archive = Path(".frugalml/bentos") / f"{reg.model}-{version}.bento"
    if not archive.exists():
        info(f"serve: fetching {record['bento_uri']}")
        reg.store.download(f"bentos/{reg.model}/{version}.bento", archive)
    return bento.import_bento(archive)


def start_backend(tag: str, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--host", host, "--port", str(port)],
                            env=dict(os.environ), start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FrugalError(f"bentoml serve exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise FrugalError(f"bentoml serve did not become ready within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(reg: Registry, ref: str, host: str, port: int) -> int:
    """Serve one version (an alias is resolved once) until interrupted."""
    version = reg.resolve(ref)
    tag = ensure_bento(reg, version)
    info(f"serve: {reg.model} {version} at http://{host}:{port}")
    proc = start_backend(tag, host, port)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 0


@dataclass
class Backend:
    version: str
    proc: subprocess.Popen
    url: str
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class Follower:
    """The proxy and the alias watcher, on one asyncio loop."""

    def __init__(self, reg: Registry, alias: str, host: str, port: int, poll_s: float, max_body: int):
        self.reg, self.alias, self.host, self.port, self.poll_s = reg, alias, host, port, poll_s
        self.max_body = max_body
        self.backend: Backend | None = None

    def _launch(self, version: str) -> Backend:
        tag = ensure_bento(self.reg, version)
        port = free_port()
        proc = start_backend(tag, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc)
        except FrugalError:
            stop(proc)
            raise
        return Backend(version, proc, url)

    async def handle(self, request):
        import aiohttp
        from aiohttp import web

        backend = self.backend
        backend.inflight += 1
        try:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            async with self.session.request(request.method, backend.url + request.path_qs, data=body,
                                            headers=headers) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items()
                       if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"}
                out["x-frugalml-version"] = backend.version
                return web.Response(status=resp.status, body=payload, headers=out)
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"model server unavailable: {exc.__class__.__name__}"}, status=503)
        finally:
            backend.inflight -= 1
            if backend.inflight == 0:
                backend.drained.set()

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                version = await loop.run_in_executor(None, self.reg.resolve, self.alias)
            except FrugalError as exc:
                info(f"serve: cannot read alias {self.alias}: {exc}; still serving {self.backend.version}")
                continue
            if version == self.backend.version:
                continue
            info(f"serve: {self.alias} moved to {version}; starting it next to {self.backend.version}")
            try:
                new = await loop.run_in_executor(None, self._launch, version)
            except FrugalError as exc:
                info(f"serve: {version} did not start ({exc}); still serving {self.backend.version}")
                continue
            old, self.backend = self.backend, new  # new requests go to the new version from here on
            if old.inflight:
                old.drained.clear()
                try:
                    await asyncio.wait_for(old.drained.wait(), timeout=60)
                except asyncio.TimeoutError:
                    pass
            await loop.run_in_executor(None, stop, old.proc)
            info(f"serve: now serving {version}")

    async def main(self) -> None:
        import aiohttp
        from aiohttp import web

        loop = asyncio.get_running_loop()
        version = await loop.run_in_executor(None, self.reg.resolve, self.alias)
        self.backend = await loop.run_in_executor(None, self._launch, version)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False)
        app = web.Application(client_max_size=self.max_body * 4 + (1 << 20))
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        info(f"serve: {self.reg.model} {version} ({self.alias}, followed every {self.poll_s:g} s) "
             f"at http://{self.host}:{self.port}")
        try:
            await self.watch()
        finally:
            await runner.cleanup()
            await self.session.close()
            stop(self.backend.proc)


def follow(reg: Registry, alias: str, host: str, port: int, poll_s: float, max_body: int) -> int:
    f = Follower(reg, alias, host, port, poll_s, max_body)
    try:
        asyncio.run(f.main())
    except KeyboardInterrupt:
        if f.backend is not None:
            stop(f.backend.proc)
    return 0

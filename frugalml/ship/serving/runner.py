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
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from frugalml.core.console import info
from frugalml.core.errors import FrugalError
from frugalml.core.registry import Registry
from frugalml.core.store import file_sha256
from frugalml.ship import bento

HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def ensure_bento(reg: Registry, version: str) -> str:
    """The version's bento in the local BentoML store, checked against the registry every time.

    The archive (downloaded once, cached under .frugalml/bentos/) must have the sha256 that
    the immutable version record names; a cached archive that does not is fetched again. The
    bento in the local BentoML store must hold the archive's files byte for byte; one that
    does not is replaced from the verified archive.
    """

    record = reg.get(version)
    tag, want = record["bento_tag"], record.get("bento_sha256")
    if not want:
        raise FrugalError(
            f"the registry record of {reg.model} {version} has no bento_sha256; refusing to serve an unverifiable bento"
        )
    archive = Path(".frugalml/bentos") / f"{reg.model}-{version}.bento"
    if archive.exists() and file_sha256(archive) != want:
        info(f"serve: the cached {archive} does not match the registry's sha256; fetching it again")
        archive.unlink()
    if not archive.exists():
        info(f"serve: fetching {record['bento_uri']}")
        reg.store.download(f"bentos/{reg.model}/{version}.bento", archive)
        if file_sha256(archive) != want:
            archive.unlink()
            raise FrugalError(
                f"the bento of {reg.model} {version} in the store does not match the sha256 in its "
                "registry record; refusing to serve it"
            )
    if bento.has_bento(tag):
        if bento.matches_archive(tag, archive):
            return tag
        info(f"serve: the local BentoML store's {tag} differs from the verified archive; importing it again")
        bento.delete_bento(tag, archive)
    return bento.import_bento(archive)


def start_backend(tag: str, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", tag, "--host", host, "--port", str(port)],
        env=dict(os.environ),
        start_new_session=True,
    )


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


class Stopping(Exception):
    """SIGTERM or SIGINT arrived: stop the backend and exit 0."""


def _raise_stopping(signum, frame):
    raise Stopping(signal.Signals(signum).name)


def serve(reg: Registry, ref: str, host: str, port: int) -> int:
    """Serve one version (an alias is resolved once) until SIGTERM/SIGINT, then stop the backend.

    The backend runs in its own process group (so a Ctrl-C in the terminal reaches only us);
    on a signal it gets SIGTERM, finishes its in-flight requests and exits with its workers.
    """
    version = reg.resolve(ref)
    tag = ensure_bento(reg, version)
    info(f"serve: {reg.model} {version} at http://{host}:{port}")
    old = {s: signal.signal(s, _raise_stopping) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = None
    try:
        proc = start_backend(tag, host, port)
        return proc.wait()
    except (Stopping, KeyboardInterrupt):
        for s in old:  # a second signal must not interrupt the shutdown
            signal.signal(s, signal.SIG_IGN)
        info("serve: stopping (finishing in-flight requests)")
        return 0
    finally:
        if proc is not None:
            stop(proc)
        for s, h in old.items():
            signal.signal(s, h)


RETRY_FAILED_S = 60.0


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, FrugalError) else f"{exc.__class__.__name__}: {exc}"


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
        self.failed: dict = {}  # versions that failed to start recently: not retried every poll
        self.procs: set[subprocess.Popen] = set()  # every backend started and not yet stopped
        self.lock = threading.Lock()
        self.closing = False

    def _launch(self, version: str) -> Backend:
        tag = ensure_bento(self.reg, version)
        port = free_port()
        with self.lock:  # a backend started while we shut down would be left behind
            if self.closing:
                raise FrugalError("shutting down")
            proc = start_backend(tag, "127.0.0.1", port)
            self.procs.add(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc)
        except BaseException:
            self._stop(proc)
            raise
        return Backend(version, proc, url)

    def _stop(self, proc: subprocess.Popen) -> None:
        stop(proc)
        with self.lock:
            self.procs.discard(proc)

    def stop_all(self) -> None:
        with self.lock:
            self.closing = True
            procs = list(self.procs)
        for p in procs:
            self._stop(p)

    async def handle(self, request):
        import aiohttp  # lazy: aiohttp: only the serving runner needs it
        from aiohttp import web  # lazy: aiohttp: only the serving runner needs it

        backend = self.backend
        backend.inflight += 1
        try:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            async with self.session.request(
                request.method, backend.url + request.path_qs, data=body, headers=headers
            ) as resp:
                payload = await resp.read()
                out = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"
                }
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
            # Whatever goes wrong while watching (an unreadable or malformed alias, a bento that
            # fails to download, import or start) is logged and retried at the next poll: the
            # healthy backend keeps serving.
            try:
                version = await loop.run_in_executor(None, self.reg.resolve, self.alias)
            except Exception as exc:  # noqa: BLE001 - see above
                info(f"serve: cannot read alias {self.alias}: {_why(exc)}; still serving {self.backend.version}")
                continue
            if version == self.backend.version or version in self.failed:
                continue
            info(f"serve: {self.alias} moved to {version}; starting it next to {self.backend.version}")
            try:
                new = await loop.run_in_executor(None, self._launch, version)
            except Exception as exc:  # noqa: BLE001 - see above
                info(
                    f"serve: {version} did not start ({_why(exc)}); still serving {self.backend.version}; "
                    f"will try it again in {RETRY_FAILED_S:.0f} s"
                )
                self.failed[version] = loop.call_later(RETRY_FAILED_S, self.failed.pop, version, None)
                continue
            old, self.backend = self.backend, new  # new requests go to the new version from here on
            if old.inflight:
                old.drained.clear()
                try:
                    await asyncio.wait_for(old.drained.wait(), timeout=60)
                except TimeoutError:
                    pass
            await loop.run_in_executor(None, self._stop, old.proc)
            info(f"serve: now serving {version}")

    async def main(self) -> None:
        import aiohttp  # lazy: aiohttp: only the serving runner needs it
        from aiohttp import web  # lazy: aiohttp: only the serving runner needs it

        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: no backend is ever left behind
            loop.add_signal_handler(sig, me.cancel)
        runner = self.session = None
        try:
            version = await loop.run_in_executor(None, self.reg.resolve, self.alias)
            self.backend = await loop.run_in_executor(None, self._launch, version)
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False)
            app = web.Application(client_max_size=self.max_body)  # the service's own largest (body_limits)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port).start()
            info(
                f"serve: {self.reg.model} {version} ({self.alias}, followed every {self.poll_s:g} s) "
                f"at http://{self.host}:{self.port}"
            )
            await self.watch()
        except asyncio.CancelledError:
            info("serve: stopping (finishing in-flight requests)")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if runner is not None:
                await runner.shutdown()  # stop accepting; in-flight proxied requests finish
                await runner.cleanup()
            if self.session is not None:
                await self.session.close()
            await loop.run_in_executor(None, self.stop_all)


def proxy_body_limit(serving) -> int:
    """The largest body the ``--follow`` proxy reads: the largest the service itself takes (a
    full ``/classify_batch``), so a request is refused by the same rule with or without the proxy."""
    from frugalml.data.images import body_limits

    return max(body_limits(serving.max_image_bytes, serving.max_images_per_request).values())


def follow(reg: Registry, alias: str, host: str, port: int, poll_s: float, max_body: int) -> int:
    f = Follower(reg, alias, host, port, poll_s, max_body)
    try:
        asyncio.run(f.main())
    except KeyboardInterrupt:
        pass
    finally:
        f.stop_all()  # a no-op for backends already stopped
    return 0

"""Open an HTML file in headless Chromium (Debian's ``chromium``) with the network off, over the
DevTools protocol: what a reader's browser would load, log and draw.

``open_page(path, shot)`` returns the requests the page made (a self-contained page makes none
beyond itself), the requests that failed, console errors and uncaught exceptions, and the
rendered size of every <img>; a full-page screenshot goes to ``shot``. Chromium is stopped on
return, on failure and on SIGTERM (its own process group, killed in ``finally``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # {"src": ..., "width": ..., "height": ...}
    title: str = ""
    text: str = ""


def open_page(path: Path, shot: Path, timeout: float = 60.0) -> Page:
    from websockets.sync.client import connect

    exe = chromium()
    assert exe, "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-port=0", f"--user-data-dir={profile}",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # the network is off
                "--window-size=1280,900", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not port_file.exists() or not port_file.read_text().strip():
                assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                target = next(t for t in json.load(r) if t["type"] == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
                return _drive(ws, path, shot, deadline)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _drive(ws, path: Path, shot: Path, deadline: float) -> Page:
    page, ids, pending = Page(), iter(range(1, 10_000)), {}

    def send(method: str, **params) -> int:
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        return i

    def until(pred) -> dict:
        while True:
            assert time.monotonic() < deadline, "the page did not finish loading in time"
            msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"][:200])
            elif method == "Network.loadingFailed":
                page.failed.append(f"{params.get('errorText')} {params.get('requestId')}")
            elif method == "Runtime.exceptionThrown":
                page.errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append(params["entry"].get("text", ""))
            if "id" in msg:
                pending[msg["id"]] = msg
            if pred(msg):
                return msg

    for domain in ("Page", "Network", "Runtime", "Log"):
        i = send(f"{domain}.enable")
        until(lambda m, i=i: m.get("id") == i)
    send("Page.navigate", url=path.resolve().as_uri())
    until(lambda m: m.get("method") == "Page.loadEventFired")
    script = (
        "JSON.stringify({title: document.title, text: document.body.innerText,"
        " images: Array.from(document.images).map(i => ({src: i.src.slice(0, 40), width: i.width,"
        " height: i.height, natural: i.naturalWidth, complete: i.complete}))})"
    )
    i = send("Runtime.evaluate", expression=script, returnByValue=True)
    found = json.loads(until(lambda m: m.get("id") == i)["result"]["result"]["value"])
    page.title, page.text, page.images = found["title"], found["text"], found["images"]
    i = send("Page.getLayoutMetrics")
    size = until(lambda m: m.get("id") == i)["result"]["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16_000), "scale": 1}
    i = send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
    data = until(lambda m: m.get("id") == i)["result"]["data"]
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(base64.b64decode(data))
    return page

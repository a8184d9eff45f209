"""A real `frugalml serve` (bentoml serve) answering real HTTP requests."""

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from frugalml import config
from frugalml.serving.runner import free_port
from tests.conftest import make_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(log.read_text()[-3000:])


def _post(url: str, fields: dict[str, tuple[str, bytes, str]]) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, (filename, data, ctype) in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class _Ctx:
    work: Path
    env: dict


@pytest.fixture(scope="module")
def ctx():
    return _Ctx()


@pytest.fixture(scope="module")
def served(ctx, tmp_path_factory, s3_server):
    from frugalml.config import StorageConfig
    from frugalml.store import Store

    work = tmp_path_factory.mktemp("serve")
    src = make_dataset(work / "src", per_class=20)
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    name = f"srv-{uuid.uuid4().hex[:6]}"
    (work / "params.yaml").write_text("train:\n  epochs: 2\n")
    config.write_overrides(work / "params.yaml", [
        f"data.source={src}", "model.arch=resnet18", "model.image_size=16", f"model.name={name}",
        f"storage.prefix={prefix}", "validate.min_images_per_class=3", "gates.min_accuracy=0.0",
        "serving.max_image_bytes=20000", "serving.max_image_pixels=10000", "evaluate.latency_samples=10"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("ingest", "validate", "train", "evaluate", "gate", "package"):
        res = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=work, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    version = json.loads((work / "metrics/package.json").read_text())["version"]
    cli = [sys.executable, "-m", "frugalml.cli"]
    assert subprocess.run(cli + ["promote", version, "--to", "production"], cwd=work, env=env).returncode == 0
    # Serve from a fresh BentoML home: the bento must come from S3.
    env = {**env, "BENTOML_HOME": str(work / "fresh-bentoml-home")}
    port = free_port()
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(cli + ["serve", "--alias", "production", "--port", str(port)], cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc, work / "serve.log")
    ctx.work, ctx.env = work, env
    yield url, version, src
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_classify_png_and_jpeg(served):
    url, version, src = served
    png = _png(src / "red" / "red_000.png")
    code, body = _post(url + "/classify", {"image": ("red.png", png, "image/png")})
    assert code == 200, body
    assert body["version"] == version
    labels = [p["label"] for p in body["predictions"]]
    assert set(labels) <= {"red", "green", "blue"} and len(labels) == 3
    assert abs(sum(p["probability"] for p in body["predictions"]) - 1) < 1e-3
    buf = io.BytesIO()
    Image.open(src / "blue" / "blue_001.png").convert("RGB").save(buf, format="JPEG")
    code, body = _post(url + "/classify", {"image": ("blue.jpg", buf.getvalue(), "image/jpeg")})
    assert code == 200 and body["predictions"]


def test_bad_input_gets_400_with_a_message(served):
    url, _, _ = served
    cases = {
        "text": b"this is not an image",
        "empty": b"",
        "too_many_bytes": os.urandom(30_000),
    }
    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, format="PNG")  # 40,000 pixels > serving.max_image_pixels
    cases["too_many_pixels"] = big.getvalue()
    for case, data in cases.items():
        code, body = _post(url + "/classify", {"image": (f"{case}.png", data, "application/octet-stream")})
        assert code == 400, (case, code, body)
        assert json.dumps(body) and ("error" in json.dumps(body).lower() or body), case


def test_metadata_and_batch(served):
    url, version, src = served
    req = urllib.request.Request(url + "/metadata", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        meta = json.loads(r.read())
    assert meta["version"] == version and meta["classes"] == ["blue", "green", "red"]
    assert "accuracy" in meta["metrics"]
    boundary = uuid.uuid4().hex
    body = b""
    for i, p in enumerate([src / "red" / "red_001.png", src / "green" / "green_001.png"]):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + p.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/classify_batch", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert len(out) == 2 and all(o["predictions"] for o in out)


def test_follow_switches_versions_without_failed_requests(served, ctx):
    import threading

    url, v1, src = served
    work, env = ctx.work, ctx.env
    time.sleep(1.1)  # versions are named to the second
    res = subprocess.run([sys.executable, "-m", "tasks.package"], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    v2 = json.loads((work / "metrics/package.json").read_text())["version"]
    assert v2 != v1
    cli = [sys.executable, "-m", "frugalml.cli"]
    port = free_port()
    proc = subprocess.Popen(cli + ["serve", "--follow", "--poll-s", "0.5", "--port", str(port)], cwd=work, env=env,
                            stdout=open(work / "follow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    furl = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(furl, proc, work / "follow.log")
        png = (src / "green" / "green_002.png").read_bytes()
        results, stop_flag = [], threading.Event()

        def traffic():
            while not stop_flag.is_set():
                try:
                    results.append(_post(furl + "/classify", {"image": ("g.png", png, "image/png")}))
                except Exception as exc:  # noqa: BLE001 - a failed request is what we count
                    results.append((0, {"error": repr(exc)}))

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(2)
        assert subprocess.run(cli + ["promote", v2, "--to", "production"], cwd=work, env=env).returncode == 0
        deadline = time.time() + 120
        while time.time() < deadline and not any(b.get("version") == v2 for _, b in list(results)):
            time.sleep(0.2)
        time.sleep(2)
        stop_flag.set()
        for w in workers:
            w.join()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    failed = [r for r in results if r[0] != 200]
    versions = [b.get("version") for _, b in results]
    assert not failed, failed[:3]
    assert v1 in versions and v2 in versions, (work / "follow.log").read_text()[-2000:]
    assert len(results) > 20

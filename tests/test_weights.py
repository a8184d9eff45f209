"""Pretrained weights: local cache, team mirror (SeaweedFS), torchvision's download (loopback HTTP).

No test reaches the internet: the download path is torchvision's own ``load_state_dict_from_url``
and hash check, run unchanged against a loopback HTTP server that serves a weights file generated
here, whose name carries its real sha256 prefix.
"""

import hashlib
import io
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from frugalml import weights
from frugalml.errors import ConfigError
from frugalml.modeling import bare_backbone
from frugalml.store import TRAFFIC
from tests.conftest import ROOT, run

FRUGALML = [sys.executable, "-m", "frugalml.cli"]


class WeightsServer:
    """Serves generated weights files on 127.0.0.1 and counts the requests per file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                owner.hits[name] = owner.hits.get(name, 0) + 1
                data = owner.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/models/{name}"

    def add(self, arch: str, seed: int = 0) -> tuple[str, bytes]:
        """A torchvision-format state dict for ``arch``, named ``<arch>-<sha256[:8]>.pth``."""
        torch.manual_seed(seed)
        buf = io.BytesIO()
        torch.save(bare_backbone(arch).state_dict(), buf)
        data = buf.getvalue()
        name = f"{arch}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        self.files[name] = data
        return name, data

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def weights_server():
    server = WeightsServer()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_then_mirror_then_cache_and_a_corrupt_mirror_is_not_loaded(
    weights_server, store, tmp_path, monkeypatch, capsys
):
    arch = "mobilenet_v3_small"
    name, data = weights_server.add(arch)
    url = weights_server.url(name)
    digest = hashlib.sha256(data).hexdigest()
    key = f"weights/{arch}/{name}"

    # worker A: empty cache, empty mirror -> torchvision's download (hash checked), then mirrored
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a"))
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    out = capsys.readouterr().err
    assert got.source == "download" and got.sha256 == digest and got.download_bytes == len(data)
    assert f"weights: downloading {name} from {url}" in out and "hash prefix" in out and "mirrored to" in out
    assert weights_server.hits[name] == 1
    assert store.head(key)["Metadata"]["sha256"] == digest
    assert got.path == tmp_path / "a" / "hub" / "checkpoints" / name

    # worker B starts empty: from the mirror, not the internet; the S3 bytes are counted
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "b"))
    before = TRAFFIC.bytes_down
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    assert got.source == "mirror" and got.sha256 == digest and got.download_bytes == 0
    assert TRAFFIC.bytes_down - before >= len(data)
    assert "from the team mirror" in capsys.readouterr().err
    assert weights_server.hits[name] == 1
    # ... and then from its own cache, with the state dict that was served
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    assert got.source == "cache" and "from the local cache" in capsys.readouterr().err
    served = torch.load(io.BytesIO(data), weights_only=True)
    assert all(torch.equal(served[k], v) for k, v in got.state_dict().items())

    # a mirror object whose bytes are not what was uploaded: detected, not loaded, re-fetched, repaired
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    store.client.put_object(Bucket=store.bucket, Key=store.key(key), Body=bytes(bad), Metadata={"sha256": digest})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "c"))
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    assert got.source == "download" and got.sha256 == digest
    assert "checksum mismatch" in capsys.readouterr().err
    assert weights_server.hits[name] == 2
    assert store.get_bytes(key)[0] == data  # the mirror copy was replaced by the verified file

    # a mirror object that is self-consistent but is not the named file (prefix check)
    store.put_bytes(key, b"not weights at all")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "d"))
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    assert got.source == "download" and "does not match its hash prefix" in capsys.readouterr().err

    # a corrupt file in the local cache is set aside, never loaded
    cached = tmp_path / "d" / "hub" / "checkpoints" / name
    cached.write_bytes(b"torn")
    got = weights.resolve(arch, store=store, url_override=url, progress=False)
    assert got.source == "mirror" and got.sha256 == digest
    assert (cached.parent / (name + ".corrupt")).read_bytes() == b"torn"


def test_download_whose_bytes_fail_the_hash_check_is_refused(weights_server, store, tmp_path, monkeypatch):
    arch = "mobilenet_v3_small"
    name, data = weights_server.add(arch)
    wrong = f"{arch}-00000000.pth"  # served bytes whose sha256 does not start with 00000000
    weights_server.files[wrong] = data
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    with pytest.raises(ConfigError) as e:
        weights.resolve(arch, store=store, url_override=weights_server.url(wrong), progress=False)
    assert "invalid hash value" in str(e.value)
    assert not (tmp_path / "t" / "hub" / "checkpoints" / wrong).exists()
    assert store.head(f"weights/{arch}/{wrong}") is None


def _stage_workspace(path: Path, *overrides: str) -> Path:
    from tests.test_train import _workspace

    return _workspace(
        path,
        "model.arch=mobilenet_v3_small",
        "model.image_size=32",
        "train.epochs=1",
        "model.pretrained=torchvision",
        *overrides,
    )


def _train(work: Path, torch_home: Path, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(torch_home)}
    return run([sys.executable, "-m", "tasks.train"], work, check=check, env=env)


def test_train_stage_records_lineage_and_the_transfer_in_its_cost_entry(weights_server, store, tmp_path):
    arch = "mobilenet_v3_small"
    name, data = weights_server.add(arch, seed=3)
    digest = hashlib.sha256(data).hexdigest()
    common = [f"model.weights_url={weights_server.url(name)}", f"storage.prefix={store.prefix}", "train.finetune=head"]

    first = _stage_workspace(tmp_path / "w1", *common)
    res = _train(first, tmp_path / "home1")
    assert f"weights: downloading {name}" in res.stderr
    report = json.loads((first / "metrics/train.json").read_text())
    assert report["pretrained"] == {
        "kind": "torchvision",
        "arch": arch,
        "file": name,
        "sha256": digest,
        "source": "download",
        "url": weights_server.url(name),
    }
    cost = json.loads((first / "costs/train.json").read_text())
    assert cost["weights_from"] == "download" and cost["weights_download_bytes"] == len(data)
    # the head was fine-tuned on top of the served backbone: its weights are in the model, unchanged
    model = torch.load(first / "models/model.pt", weights_only=True)["state_dict"]
    served = torch.load(io.BytesIO(data), weights_only=True)
    assert torch.equal(model["features.0.0.weight"], served["features.0.0.weight"])

    # a second worker, empty cache: from the mirror, nothing from the internet, S3 GETs counted
    second = _stage_workspace(tmp_path / "w2", *common)
    res = _train(second, tmp_path / "home2")
    assert "from the team mirror" in res.stderr and weights_server.hits[name] == 1
    cost = json.loads((second / "costs/train.json").read_text())
    assert cost["weights_from"] == "mirror" and cost["weights_download_bytes"] == 0
    assert cost["s3_bytes_down"] >= len(data) and cost["s3_requests_get"] >= 1
    assert json.loads((second / "metrics/train.json").read_text())["pretrained"]["source"] == "mirror"


def test_no_network_no_cache_no_mirror_is_one_line_and_exit_2(store, tmp_path):
    port = _closed_port()
    work = _stage_workspace(
        tmp_path / "w", f"model.weights_url=http://127.0.0.1:{port}/", f"storage.prefix={store.prefix}"
    )
    res = _train(work, tmp_path / "home", check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    line = next(ln for ln in res.stderr.splitlines() if "ERROR" in ln)
    file = os.path.basename(weights.torchvision_url("mobilenet_v3_small"))
    for part in (
        file,
        f"http://127.0.0.1:{port}/{file}",
        str(tmp_path / "home" / "hub" / "checkpoints" / file),
        store.uri(f"weights/mobilenet_v3_small/{file}"),
        "frugalml weights add",
    ):
        assert part in line, part


def test_weights_add_checks_the_published_prefix_and_the_architecture(weights_server, store, tmp_path):
    arch = "mobilenet_v3_small"
    name, data = weights_server.add(arch, seed=5)
    good = tmp_path / "downloaded-by-hand.pth"
    good.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "home")}
    work = tmp_path / "ws"
    work.mkdir()
    (work / "params.yaml").write_text(
        f"storage:\n  prefix: {store.prefix}\nmodel:\n  weights_url: {weights_server.url(name)}\n"
    )

    wrong = tmp_path / "other.pth"
    wrong.write_bytes(data + b"x")
    res = run(FRUGALML + ["weights", "add", str(wrong), "--arch", arch], work, check=False, env=env)
    assert res.returncode == 2 and "does not start with the published prefix" in res.stderr
    assert "Traceback" not in res.stderr

    res = run(FRUGALML + ["weights", "add", str(good), "--arch", arch], work, env=env)
    assert store.uri(f"weights/{arch}/{name}") in res.stderr
    assert store.head(f"weights/{arch}/{name}")["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    listed = run(FRUGALML + ["weights", "list"], work, env=env).stdout
    assert name in listed and arch in listed
    # the file is now read from the mirror by `weights fetch` without touching the HTTP server
    fetched = json.loads(run(FRUGALML + ["weights", "fetch", "--arch", arch], work, env=env).stdout)
    assert fetched["source"] == "mirror" and weights_server.hits.get(name, 0) == 0

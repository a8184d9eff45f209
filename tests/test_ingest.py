"""Ingest and validate on local folders and archives: bad files are reported, never fatal."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from frugalml.core import config
from frugalml.core.costs import CostMeter
from frugalml.core.errors import Rejected
from tests.conftest import make_dataset


def _png(color=(10, 20, 30), size=(12, 12), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


def _ingest(tmp_path, monkeypatch, source, *overrides):
    from tasks import ingest

    monkeypatch.chdir(tmp_path)
    cfg = config.validate(config.apply_overrides({}, [f"data.source={source}", *overrides]))
    with CostMeter("ingest", "t") as meter:
        ingest.run(cfg, meter)
    return cfg, json.loads(Path("metrics/ingest.json").read_text()), meter


def test_bad_inputs_are_rejected_with_reasons(tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "src", per_class=12)
    good = (src / "red" / "red_000.png").read_bytes()
    (src / "red" / "empty.png").write_bytes(b"")
    (src / "red" / "notes.png").write_bytes(b"this is text, not an image")
    (src / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "red" / "readme.txt").write_text("hello")
    (src / "loose.png").write_bytes(good)
    (src / "red" / ".DS_Store").write_bytes(b"junk")
    (src / "__MACOSX").mkdir()
    (src / "__MACOSX" / "x.png").write_bytes(good)
    big = io.BytesIO()
    Image.new("L", (3000, 3000)).save(big, format="PNG")
    (src / "blue" / "bomb.png").write_bytes(big.getvalue())
    (src / "green" / "loop").symlink_to(src / "green")
    _, report, _ = _ingest(tmp_path, monkeypatch, src, "data.max_pixels=1000000")
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert reasons["empty.png"] == "empty"
    assert reasons["notes.png"] == "not_an_image"
    assert reasons["truncated.png"] == "corrupt"
    assert reasons["readme.txt"] == "unknown_extension"
    assert reasons["loose.png"] == "outside_class_folder"
    assert reasons["bomb.png"] == "decompression_bomb"
    assert reasons["loop"] == "symlink_loop"
    assert report["counts"]["hidden_skipped"] == 2
    assert report["counts"]["images"] == 36  # every good image made it
    assert report["counts"]["duplicates"] == 0
    manifest = Path("data/manifest.csv").read_text().splitlines()
    assert len(manifest) == 37


def test_modes_are_normalised_to_rgb_and_originals_kept(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    Image.new("P", (8, 8)).save(src / "a" / "palette.png")
    Image.new("LA", (8, 8), (100, 50)).save(src / "a" / "la.png")
    Image.new("CMYK", (8, 8), (1, 2, 3, 4)).save(src / "a" / "cmyk.jpg")
    Image.new("I;16", (8, 8), 40000).save(src / "a" / "sixteen.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(src / "a" / "alpha.png")
    _ingest(tmp_path, monkeypatch, src)
    from frugalml.contracts import read_manifest

    rows = {r["source_path"]: r for r in read_manifest()}
    assert {r["mode"] for r in rows.values()} >= {"P", "LA", "CMYK", "RGBA"}
    from frugalml.data.shards import ShardReader

    reader = ShardReader(Path("data/prepared"))
    for r in rows.values():
        with Image.open(io.BytesIO(reader.read_row(r))) as im:
            assert im.mode == "RGB"


def test_archive_members_outside_the_workspace_are_rejected(tmp_path, monkeypatch):
    arc = tmp_path / "drop.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for i, name in enumerate(("cats/ok1.png", "cats/ok2.png", "../evil.png", "/abs/evil.png")):
            data = _png((i * 40, 1, 2))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    zarc = tmp_path / "drop.zip"
    with zipfile.ZipFile(zarc, "w") as zf:
        zf.writestr("dogs/ok.png", _png((5, 5, 5)))
        zf.writestr("../../escape.png", _png((6, 6, 6)))
    _, report, _ = _ingest(tmp_path, monkeypatch, arc)
    assert {r["reason"] for r in report["rejected"]} == {"unsafe_archive_member"}
    assert report["counts"]["images"] == 2
    _, report, _ = _ingest(tmp_path, monkeypatch, zarc)
    assert [r["path"] for r in report["rejected"]] == ["../../escape.png"]
    assert not (tmp_path.parent / "escape.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_reingest_keeps_splits_and_counts_new_images_for_labeling(tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "src", per_class=10)
    _, first, meter = _ingest(tmp_path, monkeypatch, src)
    assert first["counts"]["new"] == 30 and meter.extra["labeled_images"] == 30
    from frugalml.contracts import read_manifest

    before = {r["sha256"]: r["split"] for r in read_manifest()}
    make_dataset(tmp_path / "more", per_class=2, seed=99)
    for p in (tmp_path / "more").rglob("*.png"):
        target = src / p.parent.name / ("new_" + p.name)
        target.write_bytes(p.read_bytes())
    (src / "red" / "red_000.png").unlink()
    _, second, meter = _ingest(tmp_path, monkeypatch, src)
    assert second["counts"]["new"] == 6 and second["counts"]["removed"] == 1
    assert second["counts"]["decoded"] == 6  # only the new files were read and decoded
    assert second["counts"]["reused_unchanged"] == 29
    assert meter.extra["labeled_images"] == 6
    after = {r["sha256"]: r["split"] for r in read_manifest()}
    assert all(after[s] == before[s] for s in after if s in before)
    assert len(read_manifest()) == 35
    shards = sorted(p.name for p in Path("data/prepared").iterdir())
    assert all(n.startswith("shard-") and n.endswith(".tar") for n in shards)
    # A file changed in place (same name, new content) is decoded again.
    make_dataset(tmp_path / "changed", per_class=1, seed=7)
    (src / "green" / "green_003.png").write_bytes((tmp_path / "changed" / "green" / "green_000.png").read_bytes())
    _, third, _ = _ingest(tmp_path, monkeypatch, src)
    assert third["counts"]["decoded"] == 1 and third["counts"]["new"] == 1 and third["counts"]["removed"] == 1


def test_same_image_under_two_labels_is_rejected(tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "src", per_class=5)
    (src / "blue" / "copy.png").write_bytes((src / "red" / "red_001.png").read_bytes())
    (src / "red" / "dup.png").write_bytes((src / "red" / "red_002.png").read_bytes())
    _, report, _ = _ingest(tmp_path, monkeypatch, src)
    conflict = [r for r in report["rejected"] if r["reason"] == "label_conflict"]
    assert len(conflict) == 2
    assert report["counts"]["duplicates"] == 1


@pytest.fixture
def no_store(monkeypatch):
    """No object store configured: validation runs without a drift reference."""
    for var in ("FRUGALML_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home")  # no ~/.aws either


def test_validation_failure_lists_failed_expectations(tmp_path, monkeypatch, no_store):
    from tasks import validate

    src = make_dataset(tmp_path / "src", per_class=6)
    cfg, _, _ = _ingest(tmp_path, monkeypatch, src)
    cfg = config.validate(
        config.apply_overrides(
            config.dump(cfg),
            ["validate.min_images_per_class=8", "validate.expected_classes=[red, green, blue, yellow]"],
        )
    )
    with pytest.raises(Rejected) as e:
        with CostMeter("validate", "t") as m:
            validate.run(cfg, m)
    msg = str(e.value)
    assert "minimum images per class: observed 6" in msg
    assert "expected class set" in msg
    report = json.loads(Path("metrics/validation.json").read_text())
    assert report["success"] is False
    assert Path("reports/validation/index.html").exists()


def test_validation_catches_leakage(tmp_path, monkeypatch, no_store):
    from frugalml.contracts import read_manifest, write_manifest
    from tasks import validate

    src = make_dataset(tmp_path / "src", per_class=12)
    cfg, _, _ = _ingest(tmp_path, monkeypatch, src)
    rows = read_manifest()
    leak = dict(rows[0], split="test" if rows[0]["split"] != "test" else "train", path=rows[0]["path"])
    write_manifest(rows + [leak])
    with pytest.raises(Rejected, match="no content hash in two splits"):
        with CostMeter("validate", "t") as m:
            validate.run(cfg, m)


def test_label_drift_against_last_validated_dataset(tmp_path, monkeypatch, store):
    import uuid

    from tasks import validate

    name = f"drift-{uuid.uuid4().hex[:6]}"
    common = [f"model.name={name}", f"storage.prefix={store.prefix}", "validate.min_images_per_class=3"]
    src = make_dataset(tmp_path / "src", per_class=20)
    cfg, _, _ = _ingest(tmp_path, monkeypatch, src, *common)
    with CostMeter("validate", "t") as m:
        first = validate.run(cfg, m)
    assert first.drift_reference is None  # nothing validated before: no drift check
    assert store.exists(f"validation/{name}/last.json")

    for p in sorted((src / "red").glob("*.png"))[4:]:  # red drops from 1/3 to 4/44 of the data
        p.unlink()
    cfg, _, _ = _ingest(tmp_path, monkeypatch, src, *common)
    with CostMeter("validate", "t") as m:
        warned = validate.run(cfg, m)  # drift_action=warn: reported, not fatal
    assert warned.success and warned.warnings == ["label-distribution drift"]
    drift = next(c for c in warned.expectations if c.name == "label-distribution drift")
    assert abs(drift.observed - (1 / 3 - 4 / 44)) < 1e-3

    for p in sorted((src / "green").glob("*.png"))[5:]:
        p.unlink()
    cfg, _, _ = _ingest(tmp_path, monkeypatch, src, *common, "validate.drift_action=fail")
    with pytest.raises(Rejected, match="label-distribution drift"):
        with CostMeter("validate", "t") as m:
            validate.run(cfg, m)


def test_special_files_are_reported_unreadable(tmp_path, monkeypatch):
    import os

    src = make_dataset(tmp_path / "src", per_class=3)
    os.mkfifo(src / "red" / "pipe.png")
    _, report, _ = _ingest(tmp_path, monkeypatch, src)
    assert [(Path(r["path"]).name, r["reason"]) for r in report["rejected"]] == [("pipe.png", "unreadable")]


def test_split_folders_exif_orientation_and_max_side(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for split in ("train", "val", "test"):
        make_dataset(src / split, per_class=2, seed={"train": 1, "val": 2, "test": 3}[split])
    img = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the upright image is 20 wide, 60 high
    img.save(src / "train" / "red" / "rotated.jpg", exif=exif.tobytes())
    _, report, _ = _ingest(tmp_path, monkeypatch, src, "data.max_side=30")
    from frugalml.contracts import read_manifest
    from frugalml.data.shards import ShardReader

    rows = read_manifest()
    assert report["counts"]["per_split"] == {"test": 6, "train": 7, "val": 6}
    assert all(r["split"] == r["source_path"].split("/")[0] for r in rows)
    rot = next(r for r in rows if r["source_path"].endswith("rotated.jpg"))
    assert (rot["width"], rot["height"]) == ("60", "20")  # the manifest keeps the original size
    with Image.open(io.BytesIO(ShardReader(Path("data/prepared")).read_row(rot))) as im:
        assert im.size == (10, 30)  # upright, longest side capped at 30


def test_s3_source_on_its_own_endpoint(tmp_path, monkeypatch, store):
    from tests.conftest import upload_folder

    make_dataset(tmp_path / "src", per_class=4)
    uri = upload_folder(store, tmp_path / "src", "elsewhere/drop")
    # The pipeline's store points at a dead port: the source must be read from data.endpoint_url.
    _, report, _ = _ingest(
        tmp_path,
        monkeypatch,
        uri,
        f"data.endpoint_url={store.settings.endpoint_url}",
        "storage.endpoint_url=http://127.0.0.1:9",
    )
    assert report["source_kind"] == "s3" and report["counts"]["images"] == 12


def test_builtin_shapes_is_deterministic_per_image_and_regenerated_on_a_new_version(tmp_path):
    from frugalml.data import builtin

    a = builtin.write_shapes(tmp_path / "a", per_class=6)
    b = builtin.write_shapes(tmp_path / "b", per_class=6)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert len(files) == 60 and {f.split("/")[0] for f in files} == set(builtin.SHAPES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # image i depends on (seed, class, i) only, not on how many were generated
    assert builtin.shape_image("star", 3).tobytes() == builtin.shape_image("star", 3).tobytes()
    assert builtin.shape_image("star", 3).tobytes() != builtin.shape_image("star", 4).tobytes()
    assert builtin.shape_image("star", 3).size == (builtin.SHAPES_SIZE, builtin.SHAPES_SIZE)
    # a marker from another generator version: the folder is generated again, not trusted
    (a / ".complete").write_text("shapes v0\n")
    (a / "star" / "stale.png").write_bytes(b"old")
    builtin.write_shapes(a, per_class=6)
    assert not (a / "star" / "stale.png").exists() and len(list(a.rglob("*.png"))) == 60


def test_unknown_builtin_dataset_is_a_config_error(tmp_path):
    from frugalml.core.errors import ConfigError

    (tmp_path / "params.yaml").write_text("data:\n  source: builtin:cifar\n")
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "params.yaml")
    assert "builtin:shapes" in str(e.value) and "builtin:digits" in str(e.value)

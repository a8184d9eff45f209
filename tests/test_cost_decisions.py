"""Deciding on cost: the live training budget (train.max_usd), the estimate, the feature cache."""

import json
import time

import pytest
import torch

from frugalml.model.budget import Budget, BudgetReached
from tests.test_train import _train, _weights, _workspace


def test_budget_check_looks_ahead_by_the_largest_interval_with_a_margin():
    """Pure logic, on a clock the test controls: it stops before the spend passes the budget,
    looking ahead by the largest interval so far (a slow step after a fast one must not pass it)."""
    usd = [0.0]
    b = Budget(max_usd=1.0, spent=lambda: usd[0], check_every_s=0.0)
    b._last, b._last_usd = time.perf_counter() - 1.0, 0.0  # a check a second ago saw $0
    usd[0] = 0.3  # $0.3 in that interval: 0.3 + 1.5 x 0.3 = 0.75, still under
    b.check()
    b._last -= 1.0
    usd[0] = 0.35  # a fast interval ($0.05) does not shrink the look-ahead: 0.35 + 0.45 = 0.8
    b.check()
    b._last -= 1.0
    usd[0] = 0.6  # 0.6 + 1.5 x 0.3 = 1.05 > 1.0: stop now, before the spend passes the budget
    with pytest.raises(BudgetReached, match=r"\$0.60000 spent of train.max_usd \$1"):
        b.check()
    assert Budget(1.0, lambda: 0.7).affords(0.27) and not Budget(1.0, lambda: 0.7).affords(0.28)  # 10% margin


def test_training_stops_before_the_budget_and_keeps_the_last_completed_epoch(tmp_path):
    """A real train stage with many epochs and a budget of a few seconds of this machine."""
    from frugalml.core.config import CostsConfig
    from frugalml.core.costs import price

    per_s = price({"wall_s": 1.0}, CostsConfig())["total_usd"]
    probe = _workspace(tmp_path / "probe", "train.epochs=3", per_class=40)
    _train(probe)
    probe_usd = json.loads((probe / "costs/train.json").read_text())["total_usd"]
    budget = round(probe_usd + 10 * per_s, 6)  # start-up and 3 epochs, plus about 10 s more
    work = _workspace(tmp_path / "w", "train.epochs=500", f"train.max_usd={budget}", per_class=40)
    res = _train(work)
    report = json.loads((work / "metrics/train.json").read_text())
    cost = json.loads((work / "costs/train.json").read_text())
    assert report["stopped"] == "budget" and cost["stopped"] == "budget", res.stderr[-2000:]
    assert 1 <= report["epochs_run"] < 500 and report["max_usd"] == budget
    # Training stopped before the budget was passed (checked between steps, forecast per epoch);
    # the stage's tail (saving the model, the report) comes after that decision
    assert report["usd_when_stopped"] < budget, (report, budget)
    assert cost["total_usd"] >= report["usd_when_stopped"]  # the cost entry bills the tail as well
    assert "would pass train.max_usd" in res.stderr or "budget reached in epoch" in res.stderr
    curves = (work / "plots/train.csv").read_text().splitlines()
    assert len(curves) == 1 + report["epochs_run"]  # the model and the curves end at the same epoch
    assert _weights(work)  # a complete model file


def test_budget_below_one_epoch_is_a_one_line_error(tmp_path):
    work = _workspace(tmp_path / "w", "train.epochs=3", "train.max_usd=0.000001", per_class=20)
    res = _train(work, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.max_usd: the budget ran out during the first epoch" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (work / "models/model.pt").exists()
    assert json.loads((work / "costs/train.json").read_text())["exit_code"] == 2  # and it was billed


HEAD = [
    "train.finetune=head",
    "train.augment.rotation_deg=0",
    "train.augment.translate=0",
    "train.augment.scale_min=1",
    "train.augment.scale_max=1",
    "train.epochs=3",
]


def test_feature_cache_trains_the_same_head_and_is_reused(tmp_path, s3_server):
    """Head-only training on cached features of an ImageNet backbone (timm, the pip-installed
    weights) ends where training through the frozen backbone does; a second training (another lr)
    and another machine (a fresh workspace, the store's copy) compute no feature again."""
    lite = ["model.arch=timm/tf_efficientnet_lite0", "model.pretrained=imagenet", "model.image_size=32"]
    off = _workspace(tmp_path / "off", *HEAD, *lite, "train.feature_cache=false", per_class=30)
    on = _workspace(tmp_path / "on", *HEAD, *lite, per_class=30)
    _train(off)
    first = _train(on)
    assert "0 of " in first.stderr and "computing backbone features" in first.stderr
    a, b = _weights(off), _weights(on)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, on CPU
    ra, rb = (json.loads((p / "metrics/train.json").read_text()) for p in (off, on))
    assert ra["feature_cache"] == "off" and rb["feature_cache"].startswith("on (0 of")
    assert abs(ra["final_val_acc"] - rb["final_val_acc"]) <= 0.005

    from frugalml.core import config

    config.write_overrides(on / "params.yaml", ["train.lr=0.01"])
    again = _train(on)
    n = json.loads((on / "costs/train.json").read_text())["features_cached"]
    total = int(rb["feature_cache"].split(" of ")[1].split()[0])  # train and val images
    assert n == total > rb["train_images"] and "computing backbone features" not in again.stderr

    elsewhere = _workspace(tmp_path / "elsewhere", *HEAD, *lite, per_class=30)  # same images, no local cache
    _train(elsewhere)
    assert json.loads((elsewhere / "costs/train.json").read_text())["features_cached"] == n


def _record(run_id: str, params: dict, stages: list[dict]):
    from frugalml.contracts import RunRecord

    return RunRecord.model_validate({"run_id": run_id, "status": "succeeded", "params": params, "stages": stages})


def test_estimate_from_history_scales_per_image_epoch():
    """Pure computation over run records: seconds per image-epoch for the same training
    signature, times the planned image-epochs; other settings are not a basis."""
    from frugalml.core import config
    from frugalml.decide.estimate import from_history

    cfg = config.validate(config.apply_overrides({}, ["data.source=builtin:shapes", "train.epochs=4"]))
    same = config.dump(cfg)
    other = config.dump(config.validate(config.apply_overrides(same, ["model.image_size=128"])))
    row = {"stage": "train", "status": "ran", "usd": 0.01, "startup_s": 5.0}
    records = [
        _record(
            "a",
            same,
            [
                {**row, "wall_s": 105.0, "image_epochs": 1000},
                {"stage": "ingest", "status": "ran", "wall_s": 8.0, "usd": 0.0},
            ],
        ),
        _record(
            "b",
            same,
            [
                {**row, "wall_s": 125.0, "image_epochs": 1000},
                {"stage": "ingest", "status": "ran", "wall_s": 12.0, "usd": 0.0},
            ],
        ),
        _record("c", other, [{**row, "wall_s": 9999.0, "image_epochs": 1000}]),  # another image size
        _record("d", same, [{**row, "status": "up to date", "wall_s": 0.0, "image_epochs": 0}]),
    ]
    est = from_history(cfg, records, image_epochs=2000)
    # per image-epoch: median(0.100, 0.120) = 0.110 s; start-up 5 s
    assert est["train"].wall_s == pytest.approx(5.0 + 0.11 * 2000)
    assert est["train"].basis == "history (2 runs)"
    assert est["ingest"].wall_s == 10.0 and "validate" not in est
    # the same seconds on spot capacity: priced at the spot rates of the price sheet
    spot = from_history(config.validate(config.apply_overrides(same, ["train.capacity=spot"])), records, 2000)
    assert spot["train"].wall_s == est["train"].wall_s
    assert spot["train"].usd == pytest.approx(est["train"].usd * 0.0178 / 0.0446, rel=1e-3)


def test_estimate_probes_without_history(tmp_path, monkeypatch):
    """No history: a measured probe of this model on this machine prices train and evaluate;
    the stages without a basis say so instead of guessing, and labeling is priced for new images."""
    from frugalml.core import config
    from frugalml.decide.estimate import estimate, from_probe

    monkeypatch.chdir(tmp_path)
    cfg = config.validate(config.apply_overrides({}, ["data.source=builtin:digits", "model.image_size=32"]))
    est = estimate(cfg, [])
    by = {s.stage: s for s in est.stages}
    assert by["train"].basis.startswith("probe") and by["train"].wall_s > 0 and by["train"].usd > 0
    assert by["ingest"].wall_s is None and by["ingest"].basis == "no history"
    assert est.new_images == 1797 and est.labeling_usd == pytest.approx(1797 * 0.08)
    longer = config.validate(config.apply_overrides(config.dump(cfg), [f"train.epochs={2 * cfg.train.epochs}"]))
    more = from_probe(longer, est.probe, est.images)["train"].wall_s  # the same measurement, twice the epochs
    s0 = est.probe.startup_s
    assert (more - s0) / (by["train"].wall_s - s0) == pytest.approx(2.0, rel=0.01)


def test_estimate_needs_an_image_count(tmp_path, monkeypatch):
    from frugalml.core import config
    from frugalml.core.errors import ConfigError
    from frugalml.decide.estimate import estimate

    monkeypatch.chdir(tmp_path)
    cfg = config.validate(config.apply_overrides({}, [f"data.source={tmp_path}/images"]))
    with pytest.raises(ConfigError, match="run `dvc repro ingest`"):
        estimate(cfg, [])


def test_a_wrong_or_malformed_shared_feature_entry_is_recomputed_not_trusted(tmp_path, s3_server):
    """Trust round 2, item 3: an entry in the store under the right key but with other features (a
    tampered or foreign object, its recorded sha256 consistent) is caught by recomputing a sample
    and is recomputed; a malformed one is discarded, not left pinned; data.max_side is in the key."""
    from frugalml.core import config
    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store
    from frugalml.model import features

    first = _workspace(tmp_path / "first", *HEAD, per_class=30)
    _train(first)
    report = json.loads((first / "metrics/train.json").read_text())
    key = next((first / ".frugalml" / "features").glob("*.pt")).stem
    store = Store.from_config(StorageConfig())
    blob = torch.load(first / ".frugalml" / "features" / f"{key}.pt", weights_only=True)
    assert len(blob["sha256"]) > features.SPOT_CHECK  # every cached image can be drawn for the check

    # every feature scaled by 1.5: the right key and a consistent object, but not this backbone's
    forged = tmp_path / "forged.pt"
    torch.save({"sha256": blob["sha256"], "features": blob["features"] * 1.5}, forged)
    store.put_file(f"features/{key}.pt", forged)
    second = _workspace(tmp_path / "second", *HEAD, per_class=30)  # same images, no local cache
    res = _train(second)
    assert "disagrees with the backbone" in res.stderr and "computing backbone features" in res.stderr
    assert json.loads((second / "costs/train.json").read_text())["features_cached"] == 0
    assert _same_head(first, second)  # trained on the recomputed features, as the first one was
    again = torch.load(second / ".frugalml" / "features" / f"{key}.pt", weights_only=True)
    assert torch.equal(again["features"], blob["features"])  # and the entry is repaired

    # a malformed entry (not a feature table) is discarded and recomputed, not left in place
    store.put_bytes(f"features/{key}.pt", b"not a torch file")
    third = _workspace(tmp_path / "third", *HEAD, per_class=30)
    res = _train(third)
    assert "is malformed" in res.stderr and report["final_val_acc"] == pytest.approx(
        json.loads((third / "metrics/train.json").read_text())["final_val_acc"]
    )
    # capping the prepared images' side changes their pixels, so it changes the key
    cfg = config.load(first / "params.yaml")
    capped = config.load(first / "params.yaml", ["data.max_side=8"])
    assert features.cache_key(cfg, "b") != features.cache_key(capped, "b")


def _same_head(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)

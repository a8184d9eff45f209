"""Deciding on cost: the live training budget (train.max_usd), the estimate, the feature cache."""

import json
import time

import pytest
import torch

from frugalml.training import Budget, BudgetReached
from tests.test_train import _train, _weights, _workspace


def test_budget_check_looks_one_interval_ahead():
    """Pure logic, on a clock the test controls: it stops before the spend passes the budget."""
    usd = [0.0]
    b = Budget(max_usd=1.0, spent=lambda: usd[0], check_every_s=0.0)
    b._last, b._last_usd = time.perf_counter() - 1.0, 0.0  # a check a second ago saw $0
    usd[0] = 0.4  # spending $0.4/s: the next interval ends at 0.8, still under
    b.check()
    b._last -= 1.0  # another second on, at $0.4/s the next interval would end at 1.2 > 1.0
    usd[0] = 0.8
    with pytest.raises(BudgetReached, match=r"\$0.80000 spent of train.max_usd \$1"):
        b.check()
    assert Budget(1.0, lambda: 0.7).affords(0.29) and not Budget(1.0, lambda: 0.7).affords(0.3)


def test_training_stops_before_the_budget_and_keeps_the_last_completed_epoch(tmp_path):
    """A real train stage with many epochs and a budget of a few seconds of this machine."""
    from frugalml.config import CostsConfig
    from frugalml.costs import price

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
    assert cost["total_usd"] <= budget * 1.02, (cost["total_usd"], budget)  # saving the model is the overshoot
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
    """Head-only training on cached features ends where training through the frozen backbone
    does; a second training (another lr) and another machine (a fresh workspace, the store's
    copy) compute no feature again."""
    off = _workspace(tmp_path / "off", *HEAD, "train.feature_cache=false", per_class=30)
    on = _workspace(tmp_path / "on", *HEAD, per_class=30)
    _train(off)
    first = _train(on)
    assert "0 of " in first.stderr and "computing backbone features" in first.stderr
    a, b = _weights(off), _weights(on)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, on CPU
    ra, rb = (json.loads((p / "metrics/train.json").read_text()) for p in (off, on))
    assert ra["feature_cache"] == "off" and rb["feature_cache"].startswith("on (0 of")
    assert abs(ra["final_val_acc"] - rb["final_val_acc"]) <= 0.005

    from frugalml import config

    config.write_overrides(on / "params.yaml", ["train.lr=0.01"])
    again = _train(on)
    n = json.loads((on / "costs/train.json").read_text())["features_cached"]
    total = int(rb["feature_cache"].split(" of ")[1].split()[0])  # train and val images
    assert n == total > rb["train_images"] and "computing backbone features" not in again.stderr

    elsewhere = _workspace(tmp_path / "elsewhere", *HEAD, per_class=30)  # same images, no local cache
    _train(elsewhere)
    assert json.loads((elsewhere / "costs/train.json").read_text())["features_cached"] == n

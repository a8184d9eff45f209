"""frugalml labels: the learning curve and the label audit, on the real digits dataset (1,797
images) with labels flipped on purpose; the pure parts (nested subsets, the power law) alone."""

import json
import shutil
import sys

import numpy as np
import pytest

from frugalml.builtin import write_digits
from frugalml.labels import fit_power_law, labels_for, nested_subsets, power_law
from tests.conftest import make_pipeline_repo, run

FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def test_nested_subsets_are_nested_stratified_and_keep_every_class():
    y = np.repeat(np.arange(4), [100, 50, 10, 3])
    subsets = nested_subsets(y, [0.1, 0.5, 1.0], seed=3)
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) <= set(big)
    assert len(subsets[-1]) == len(y)
    counts = np.bincount(y[subsets[0]], minlength=4)
    assert list(counts) == [10, 5, 1, 1]  # 10% of each class, at least one image
    assert nested_subsets(y, [0.5], seed=3)[0].tolist() == subsets[1].tolist()  # same seed, same draw


def test_the_power_law_fit_recovers_a_known_curve_and_answers_the_target():
    ns = np.array([50, 100, 200, 400, 800, 1600])
    accs = power_law(ns, 0.95, 2.0, 0.6)
    a, b, c = fit_power_law(ns, accs)
    assert a == pytest.approx(0.95, abs=1e-3) and c == pytest.approx(0.6, abs=1e-2)
    need = labels_for(0.94, a, b, c)
    assert power_law(need, 0.95, 2.0, 0.6) == pytest.approx(0.94, abs=2e-4)
    assert labels_for(0.96, a, b, c) is None  # above the ceiling: no number of labels reaches it


@pytest.fixture
def digits_repo(tmp_path, store):
    """The pipeline on a local folder of the digits, 40 of them moved to a wrong class folder."""
    src = write_digits(tmp_path / "digits")
    rng = np.random.default_rng(7)
    files = sorted(p for p in src.rglob("*.png"))
    flipped = set()
    for i in rng.choice(len(files), 40, replace=False):
        f = files[i]
        wrong = str((int(f.parent.name) + 1 + rng.integers(0, 9)) % 10)
        dest = src / wrong / f"flipped_{f.name}"
        shutil.move(f, dest)
        flipped.add(f"{wrong}/flipped_{f.name}")
    repo = make_pipeline_repo(tmp_path, store, [f"data.source={src}", "model.image_size=32"])
    run(FRUGALML + ["run", "--until", "validate"], repo, timeout=600)
    return repo, flipped


def test_curve_and_audit_on_the_digits_with_flipped_labels(digits_repo):
    repo, flipped = digits_repo
    res = run(FRUGALML + ["labels", "audit", "--json"], repo, timeout=600)
    audit = json.loads(res.stdout)
    assert audit["images"] == 1797 and audit["folds"] == 5
    flagged = {row.split(",")[0] for row in (repo / "reports/label_audit.csv").read_text().splitlines()[1:]}
    assert len(flagged) == audit["issues"]
    found = flipped & flagged
    assert len(found) >= 0.8 * len(flipped), (len(found), len(flagged))  # recall
    assert len(found) >= 0.7 * len(flagged), (len(found), len(flagged))  # precision, on a random backbone
    html = (repo / "reports/label_audit.html").read_text()
    assert "data:image/png;base64," in html and "flipped_" in html
    assert json.loads((repo / "metrics/label_audit.json").read_text())["issues"] == audit["issues"]

    res = run(FRUGALML + ["labels", "curve", "--json"], repo, timeout=600)
    curve = json.loads(res.stdout)
    accs = [p["accuracy"] for p in curve["points"]]
    assert len(accs) == 7 and accs[-1] > accs[0]  # more labels help
    assert [p["multiple"] for p in curve["projections"]] == [1.5, 2.0, 4.0]
    for p in curve["projections"]:
        assert p["low"] <= p["accuracy"] <= p["high"] and p["labels_usd"] == pytest.approx(p["extra_labels"] * 0.08)
    assert curve["backtest_error_pp"] is not None and abs(curve["backtest_error_pp"]) < 5
    assert (repo / "reports/label_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "cached" in res.stderr  # the audit computed the features, the curve read them

    text = run(FRUGALML + ["labels", "curve", "--set", "labels.target_accuracy=0.999"], repo).stderr
    assert "beyond the fitted ceiling" in text or "more train labels" in text


def test_labels_without_a_prepared_dataset_is_one_line(tmp_path, store):
    repo = make_pipeline_repo(tmp_path, store)
    res = run(FRUGALML + ["labels", "curve"], repo, check=False)
    assert res.returncode != 0 and "run `frugalml run`" in res.stderr and "Traceback" not in res.stderr
    res = run(FRUGALML + ["labels", "audit", "--set", "labels.curve_fractions=[0.5]"], repo, check=False)
    assert res.returncode == 2 and "labels.curve_fractions" in res.stderr

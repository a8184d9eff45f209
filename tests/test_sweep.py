"""frugalml sweep / frontier: the Pareto front and the recommendation (pure), bad inputs, and a
real sweep of DVC experiments on a tiny dataset."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frugalml.contracts import GateCheck, GateDecision, SweepRecord, SweepTrial
from frugalml.core.procs import ProcessRecord
from frugalml.decide.frontier import closest_misses, pareto_front, recommend
from frugalml.model.trial import TrialLink, make_pruner
from tests.browser import open_page
from tests.conftest import BIN, prefect_api, prefect_client_env, run

FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def _t(n, acc, usd, accept=True, state="complete"):
    gate = GateDecision(
        decision="accept" if accept else "reject",
        failed=[] if accept else ["min_accuracy"],
        checks=[GateCheck(name="min_accuracy", value=acc, op=">=", threshold=0.8, passed=accept)],
        serving_usd_per_1k=0.0,
        train_usd=usd,
    )
    return SweepTrial(number=n, experiment=f"x-t{n}", overrides=[], state=state, accuracy=acc, usd=usd, gate=gate)


def test_pareto_front_and_the_cheapest_trial_that_passes():
    trials = [
        _t(0, 0.95, 0.010),  # front
        _t(1, 0.90, 0.004),  # front, cheapest accepted
        _t(2, 0.89, 0.006),  # dominated by 1
        _t(3, 0.70, 0.001, accept=False),  # front (cheapest), rejected by the gate
        _t(4, 0.95, 0.012),  # dominated by 0 (same accuracy, dearer)
        SweepTrial(number=5, experiment="x-t5", overrides=[], state="failed", usd=0.002),  # billed, no score
    ]
    assert pareto_front(trials) == [3, 1, 0]  # ordered by USD
    assert recommend(trials) == 1
    assert recommend([_t(0, 0.5, 0.1, accept=False)]) is None
    tie = [_t(0, 0.91, 0.004), _t(1, 0.93, 0.004)]
    assert recommend(tie) == 1  # same price: the more accurate


def test_the_last_trial_trains_on_what_is_left_less_its_other_costs(tmp_path, monkeypatch):
    """The train stage's live budget stops it before it passes train.max_usd, but a trial also pays
    for DVC, start-ups and evaluation: given all that is left as its train budget, the last trial
    took the sweep past sweep.budget_usd by those costs. The loop and Optuna are real; the trial
    is replaced by a model of one (a train stage that honours its live budget, then $0.002)."""
    from frugalml.core import config
    from frugalml.decide import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUGALML_S3_ENDPOINT", raising=False)
    budgets = []

    def fake_trial(cfg, number, experiment, overrides, link, pidfile, lane=None):
        max_usd = float(next(o for o in overrides if o.startswith("train.max_usd=")).split("=")[1])
        budgets.append(max_usd)
        train = min(0.008 if "model.arch=resnet18" in overrides else 0.001, max_usd)
        return SweepTrial(
            number=number, experiment=experiment, overrides=overrides, state="complete", accuracy=0.5,
            usd=train + 0.002, train_usd=train,
        )  # fmt: skip

    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    space = {"model.arch": ["mobilenet_v3_small", "resnet18"], "model.image_size": [16, 24, 32, 40]}
    cfg = config.validate({"sweep": {"space": space, "sampler": "grid", "max_trials": 8, "budget_usd": 0.02}})
    lines = []
    record = sweep.Sweep(cfg, "s-budget", [], resume=False).run(progress=lines.append)
    assert [round(t.usd, 6) for t in record.trials] == [0.003] * 4 + [0.008]  # the last trained on $0.006
    assert budgets[-1] == pytest.approx(0.02 - 4 * 0.003 - 0.002)
    assert record.spent_usd <= 0.02 + 1e-9 and record.status == "budget"
    assert any("budget $0.02 reached" in line for line in lines), lines


@pytest.mark.parametrize("parallel", [1, 2])
def test_the_first_trials_hold_back_the_estimated_overhead(tmp_path, monkeypatch, parallel):
    """Trust round 2, item 9: before any trial has finished, the overhead seen is 0, so the first
    trial (the first N with sweep.parallel: N) trained on the whole budget and paid evaluation and
    DVC on top: $0.005 + $0.002 of a $0.005 budget. The estimate the CLI gives is held back until
    a trial has finished. The loop and Optuna are real; the trial is a model of one (a train stage
    that spends its whole live budget, then $0.002 more)."""
    from frugalml.core import config
    from frugalml.decide import lanes, sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUGALML_S3_ENDPOINT", raising=False)
    monkeypatch.setattr(lanes, "make_lanes", lambda sweep_id, n, carried: [tmp_path / f"lane{i}" for i in range(n)])
    monkeypatch.setattr(lanes, "remove_lanes", lambda sweep_id: None)

    def greedy_trial(cfg, number, experiment, overrides, link, pidfile, lane=None):
        train = float(next(o for o in overrides if o.startswith("train.max_usd=")).split("=")[1])
        return SweepTrial(
            number=number, experiment=experiment, overrides=overrides, state="complete", accuracy=0.5,
            usd=train + 0.002, train_usd=train,
        )  # fmt: skip

    monkeypatch.setattr(sweep, "run_trial", greedy_trial)
    space = {"model.image_size": [16, 24, 32, 40]}
    s = {"space": space, "sampler": "grid", "max_trials": 4, "budget_usd": 0.01, "parallel": parallel}
    cfg = config.validate({"sweep": s})
    record = sweep.Sweep(cfg, f"s-reserve{parallel}", [], resume=False, overhead_usd=0.002).run()
    assert record.spent_usd <= 0.01 + 1e-9, [t.usd for t in record.trials]
    assert all(t.train_usd <= 0.01 / parallel - 0.002 + 1e-9 for t in record.trials[:parallel])


def test_when_no_trial_passes_the_closest_trial_to_each_failed_gate_is_named():
    def trial(n, acc, ms, state="complete"):
        checks = [
            GateCheck(name="min_accuracy", value=acc, op=">=", threshold=0.9, passed=acc >= 0.9),
            GateCheck(name="max_latency_ms_p95", value=ms, op="<=", threshold=5.0, passed=ms <= 5.0),
        ]
        failed = [c.name for c in checks if not c.passed]
        gate = GateDecision(
            decision="reject" if failed else "accept",
            failed=failed,
            checks=checks,
            serving_usd_per_1k=0.0,
            train_usd=0.0,
        )
        return SweepTrial(number=n, experiment=f"x-t{n}", overrides=[], state=state, accuracy=acc, usd=0.001, gate=gate)

    trials = [trial(0, 0.27, 9.0), trial(1, 0.12, 3.0), trial(2, 0.31, 8.0), trial(3, 0.99, 1.0, state="failed")]
    misses = closest_misses(trials)
    assert [(c.name, t.number, c.value) for c, t in misses] == [("min_accuracy", 2, 0.31)]  # latency: trial 1 passes
    both = [trial(0, 0.5, 7.0), trial(1, 0.6, 6.0)]
    assert [(c.name, t.number) for c, t in closest_misses(both)] == [("min_accuracy", 1), ("max_latency_ms_p95", 1)]
    split = [trial(0, 0.95, 9.0), trial(1, 0.5, 1.0)]  # each gate passed by one trial, neither passes both
    assert recommend(split) is None and closest_misses(split) == []


def test_a_setting_the_sampler_proposes_again_is_not_run_or_billed_again(tmp_path, monkeypatch):
    """TPE proposed the same settings for 3 of 10 trials on the default 16-setting space (a fresh
    clone's `frugalml sweep` on builtin:shapes): each repeat is told the earlier result instead of
    running, and the sweep ends when every setting of the space has run. The loop and Optuna are
    real; the trial itself (a DVC experiment, tested below) is replaced by its result."""
    from frugalml.core import config
    from frugalml.decide import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUGALML_S3_ENDPOINT", raising=False)
    ran = []

    def fake_trial(cfg, number, experiment, overrides, link, pidfile, lane=None):
        settings = [o for o in overrides if not o.startswith("train.max_usd=")]
        ran.append(tuple(settings))
        acc = 0.5 + 0.1 * ("model.arch=resnet18" in settings) + 0.05 * ("model.image_size=64" in settings)
        return SweepTrial(
            number=number, experiment=experiment, overrides=settings, state="complete", accuracy=acc, usd=0.001
        )

    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    space = {"model.arch": ["resnet18", "mobilenet_v3_small"], "model.image_size": [32, 64]}
    cfg = config.validate({"sweep": {"space": space, "sampler": "tpe", "max_trials": 10, "budget_usd": 1.0}})
    lines = []
    record = sweep.Sweep(cfg, "s-repeats", [], resume=False).run(progress=lines.append)
    assert len(ran) == len(set(ran)) == 4, ran  # each setting once
    assert len(record.trials) == 4 and record.status == "finished"
    assert record.spent_usd == pytest.approx(0.004)
    assert any("every setting of the space has run" in line for line in lines), lines
    assert record.repeats_skipped == sum("not run again ($0)" in line for line in lines)
    assert sum("(run " in line for line in lines) == 4 and any("(run 4 of at most 10)" in line for line in lines)
    again = sweep.ran_before(record.trials, list(ran[0]))
    assert again is not None and again.overrides == list(ran[0])
    failed = [SweepTrial(number=9, experiment="x", overrides=["a=1"], state="failed")]
    assert sweep.ran_before(failed, ["a=1"]) is None  # a failure may not recur: it runs again


def test_the_objective_can_be_macro_f1():
    a, b = _t(0, 0.95, 0.010), _t(1, 0.90, 0.010)
    a.macro_f1, b.macro_f1 = 0.80, 0.90  # same price: the front keeps the better one on the objective
    assert pareto_front([a, b]) == [0] and recommend([a, b]) == 0
    assert pareto_front([a, b], "macro_f1") == [1] and recommend([a, b], "macro_f1") == 1


def test_side_by_side_trials_split_the_cores(monkeypatch):
    from frugalml.core import config
    from frugalml.decide.sweep import trial_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the suite sets it for its own workers
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cfg = config.validate({"sweep": {"parallel": 2}})
    assert trial_threads(cfg) == 4
    assert trial_threads(config.validate({"sweep": {"parallel": 3}})) == 2
    assert trial_threads(config.validate({"sweep": {"parallel": 16}})) == 1
    assert trial_threads(config.validate({"sweep": {"parallel": 1}})) is None  # torch's default
    assert trial_threads(config.validate({"sweep": {"parallel": 2}, "train": {"num_threads": 3}})) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert trial_threads(cfg) is None  # the user's setting is kept


def test_side_by_side_trials_are_billed_their_share_of_the_machine(monkeypatch):
    """Two trials on one 8-core machine: each is billed 4 vCPUs, or the sweep pays twice for it."""
    from frugalml.core import config
    from frugalml.decide.trials import trial_vcpus

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert trial_vcpus(config.validate({"sweep": {"parallel": 1}})) is None  # the whole machine
    assert trial_vcpus(config.validate({"sweep": {"parallel": 2}})) == 4
    assert trial_vcpus(config.validate({"sweep": {"parallel": 3}, "costs": {"vcpus": 2}})) == pytest.approx(2 / 3)


@pytest.mark.parametrize("pruner, pruned", [("none", False), ("successive_halving", True), ("hyperband", True)])
def test_a_trial_prunes_with_the_sweeps_pruner_not_optunas_default(tmp_path, pruner, pruned):
    """Optuna does not store a study's pruner: a trial that loaded the study plainly pruned with
    MedianPruner whatever sweep.pruner said (a grid with `pruner: none` lost trials to it)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", pruner=make_pruner(pruner, 4))
    for value in [0.80 + 0.01 * (i % 15) for i in range(30)]:  # finished trials (every Hyperband bracket has some)
        t = study.ask()
        for epoch in range(1, 5):
            t.report(value, epoch)
            t.should_prune()  # what a trial's train stage asks after each epoch (SH records its rungs here)
        study.tell(t, value)
    trailing = study.ask()
    link = TrialLink(storage, "s", trailing._trial_id, pruner, 4)
    assert link.should_prune(1, 0.10) is pruned


def test_the_sweep_record_is_published_as_prefect_artifacts(prefect_server, tmp_path):
    trials = [_t(0, 0.95, 0.010), _t(1, 0.90, 0.004), _t(2, 0.70, 0.001, accept=False)]
    trials[1].overrides = ["train.epochs=2"]
    record = SweepRecord(
        id="s20261129-120000-ab12",
        created="2026-11-29T12:00:00Z",
        status="finished",
        space={"train.epochs": [2, 4]},
        budget_usd=1.0,
        spent_usd=0.015,
        max_trials=3,
        trials=trials,
        front=[2, 1, 0],
        recommended=1,
    )
    code = (
        "import sys; from frugalml.cli.sweep import _publish_sweep; from frugalml.contracts import SweepRecord; "
        "_publish_sweep(SweepRecord.model_validate_json(sys.stdin.read()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        input=record.model_dump_json(),
        env=prefect_client_env(prefect_server, tmp_path / "home"),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "Prefect artifacts: sweep-s20261129-120000-ab12" in res.stderr, res.stderr[-3000:]
    query = {"artifacts": {"key": {"like_": "sweep-s20261129-120000-ab12"}}}
    found = prefect_api(prefect_server, "/artifacts/filter", query)
    by_key = {a["key"]: a for a in found}
    table = by_key["sweep-s20261129-120000-ab12"]
    assert table["type"] == "table" and "train.epochs=2" in json.dumps(table["data"])
    note = by_key["sweep-s20261129-120000-ab12-recommendation"]["data"]
    assert "Recommended: trial 2" in note and "$0.00400" in note


@pytest.mark.parametrize(
    "setting, message",
    [
        ("sweep.space={}", "sweep.space is empty"),
        ("sweep.space={model.arch: [resnet18], train.nonsense: [1]}", "sweep.space.train.nonsense"),
        ("sweep.space={model.arch: [resnet18, vgg99]}", "sweep.space.model.arch: 'vgg99' is not a valid value"),
        ("sweep.space={train.lr: {low: 0.1, high: 0.01}}", "low (0.1) must be below high (0.01)"),
        ("sweep.space={model.arch: []}", "sweep.space.model.arch: an empty list of choices"),
    ],
)
def test_bad_search_spaces_are_one_line_errors(pipeline_repo, setting, message):
    res = run(FRUGALML + ["sweep", "--set", setting], pipeline_repo, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (pipeline_repo / ".frugalml" / "sweeps").exists()  # nothing ran


@pytest.mark.parametrize("args", [["sweep", "--resume", "../../evil"], ["frontier", "--sweep", "../evil"]])
def test_a_sweep_id_never_becomes_a_path(pipeline_repo, args):
    res = run(FRUGALML + args, pipeline_repo, check=False)
    assert res.returncode == 2 and "is not a sweep id" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (pipeline_repo / ".frugalml" / "sweeps").exists()
    assert not list(pipeline_repo.parent.rglob("evil*"))


def test_budget_below_one_trial_is_refused(pipeline_repo):
    # Called as `.venv/bin/frugalml` without the venv on PATH (not activated): the sweep's DVC
    # commands must still run the stages with this venv's python (they prepare the data first).
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    res = run(FRUGALML + ["sweep", "--set", "sweep.budget_usd=0.000001"], pipeline_repo, check=False, env=env)
    assert res.returncode == 2 and "is below one trial's estimate" in res.stderr, res.stderr[-2000:]
    assert not (pipeline_repo / ".frugalml" / "sweeps").exists()


def test_data_that_fails_validation_stops_a_sweep_with_exit_3(pipeline_repo):
    """Trust round 2, item 13: the pipeline ran and rejected the data: exit 3 (as `frugalml run`),
    one line naming the report, and no trial started."""
    res = run(FRUGALML + ["sweep", "--set", "validate.min_images_per_class=100000"], pipeline_repo, check=False)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "the data failed validation" in res.stderr and "Traceback" not in res.stderr
    assert not (pipeline_repo / ".frugalml" / "sweeps").exists()


SPACE = "sweep.space={train.finetune: [head, full], train.epochs: [1, 3]}"


def test_sweep_runs_trials_as_dvc_experiments_and_recommends_one(pipeline_repo, store, tmp_path):
    """Two trials at a time (sweep.parallel=2), each in its own lane: the DVC experiments of both
    lanes end up in the workspace, the Optuna storage and DVC's cache are shared under load."""
    repo = pipeline_repo
    res = run(
        FRUGALML
        + ["sweep", "--set", SPACE, "--set", "sweep.sampler=grid", "--set", "sweep.budget_usd=1"]
        + ["--set", "sweep.parallel=2"],
        repo,
        timeout=1500,
    )
    out = res.stderr
    assert "(run 4 of at most 10)" in out and "recommended: trial" in out, out[-4000:]
    sweep_id = sorted(p.name for p in (repo / ".frugalml" / "sweeps").iterdir())[-1]
    record = json.loads((repo / ".frugalml" / "sweeps" / sweep_id / "record.json").read_text())
    assert record["status"] == "finished" and len(record["trials"]) == 4
    settings = sorted(tuple(t["overrides"]) for t in record["trials"])
    assert len(set(settings)) == 4  # the grid, each combination once
    # trust round 2, item 10: the data preparation (ingest, validate) is billed to the sweep, once
    prep = [json.loads((repo / "costs" / f"{s}.json").read_text()) for s in ("ingest", "validate")]
    assert all(e["run_id"].startswith(f"{sweep_id}-prep-") for e in prep)
    assert record["prep_usd"] == pytest.approx(sum(e["total_usd"] - e["labeling_usd"] for e in prep), abs=1e-6)
    assert record["prep_usd"] > 0 and "data preparation billed to the sweep: ingest and validate" in out
    assert record["prep_labeling_usd"] == pytest.approx(sum(e["labeling_usd"] for e in prep), abs=1e-6)
    trials_usd = sum(t["usd"] for t in record["trials"])
    assert record["spent_usd"] == pytest.approx(record["prep_usd"] + trials_usd, abs=1e-6)
    assert all(t["usd"] > 0 and t["state"] in ("complete", "pruned") for t in record["trials"])
    share = (os.cpu_count() or 1) / 2  # two trials share the machine: each billed half of it
    for t in record["trials"]:  # the machine's share for the trial's wall, plus its stages' S3 requests
        machine = t["wall_s"] / 3600 * share * 0.0446  # (the train stage's checkpoint PUTs: in train_usd)
        assert machine * 0.99 - 2e-6 <= t["usd"] <= machine * 1.01 + t["train_usd"] + 2e-6, t
    spans = sorted((t["started_at"], t["started_at"] + t["wall_s"]) for t in record["trials"])
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans  # trials ran side by side
    assert not (repo / ".frugalml" / "lanes" / sweep_id).exists()  # the lanes are removed
    assert record["front"] and record["recommended"] is not None
    rec = next(t for t in record["trials"] if t["number"] == record["recommended"])
    assert rec["gate"]["decision"] == "accept"
    cheaper_passing = [t for t in record["trials"] if t["gate"]["decision"] == "accept" and t["usd"] < rec["usd"]]
    assert not cheaper_passing
    assert store.exists(f"sweeps/{sweep_id}/record.json") and store.exists(f"sweeps/{sweep_id}/frontier.png")

    shown = run([str(BIN / "dvc"), "exp", "show", "--json"], repo).stdout
    refs = run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], repo).stdout.split()
    for t in record["trials"]:
        assert t["experiment"] in shown  # every trial is a DVC experiment
        ref = next(r for r in refs if r.endswith("/" + t["experiment"]))
        for stage in ("ingest", "validate"):  # prepared once, before the trials: no trial pays for it again
            entry = json.loads(run(["git", "show", f"{ref}:costs/{stage}.json"], repo).stdout)
            assert entry["run_id"] != t["experiment"], stage
        train = json.loads(run(["git", "show", f"{ref}:costs/train.json"], repo).stdout)  # its stages: the share too
        assert train["compute_usd"] == pytest.approx(train["wall_s"] / 3600 * share * 0.0446, rel=0.01, abs=2e-6)

    png = repo / "front.png"
    table = run(FRUGALML + ["frontier", "--plot", str(png), "--apply"], repo).stderr
    assert "recommended" in table and png.read_bytes()[:4] == b"\x89PNG"
    params = (repo / "params.yaml").read_text()
    for o in rec["overrides"]:
        key, value = o.split("=", 1)
        assert f"{key.split('.')[-1]}: {value}" in params
    # the recommendation trains and passes the gates as a normal run
    final = run(FRUGALML + ["run"], repo, timeout=900)
    assert "gate: ACCEPT" in final.stderr, final.stderr[-3000:]

    # issue 30, items 3 and 4: one HTML report per run and per sweep, opened in a real browser
    # (headless Chromium, the network off): nothing but the page itself is requested, no request
    # fails, no console error, every chart is drawn with a size; the screenshots stay in tmp_path
    assert final.stderr.strip().splitlines()[-1].startswith("report: reports/run.html"), final.stderr[-500:]
    assert "report: reports/sweep.html" in out
    run_id = re.search(r"runs/([^/]+)/record\.json", final.stderr).group(1)
    stored = repo / "stored-run.html"
    run(FRUGALML + ["report", run_id, "--out", str(stored)], repo)
    assert store.exists(f"runs/{run_id}/report.html") and store.exists(f"sweeps/{sweep_id}/report.html")
    sections = {
        "run.html": ["Cost by stage", "Gate: ACCEPT", "Accuracy on", "Variants:", "Validation: passed", "Lineage",
                     "Recent runs", "weights", "manifest md5"],
        "sweep.html": ["Recommendation", f"Recommended: trial {rec['number'] + 1}", "Accuracy against cost", "Trials",
                       "the cheapest trial that passes every gate"],
        "stored-run.html": ["Cost by stage", "Gate: ACCEPT", run_id],
    }  # fmt: skip
    for name, expected in sections.items():
        page = open_page(stored if name == "stored-run.html" else repo / "reports" / name, tmp_path / f"{name}.png")
        assert page.failed == [] and page.errors == [], (name, page.failed, page.errors)
        assert all(r.startswith(("file://", "data:image/png")) for r in page.requests), (name, page.requests)
        assert page.images and all(i["natural"] > 0 and i["width"] > 300 and i["height"] > 200 for i in page.images)
        for text in expected:
            assert text in page.text, (name, text)
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000
    again = run(FRUGALML + ["run"], repo, timeout=600)  # nothing changed: recorded, and the report shows the trend
    assert "no change" in again.stderr and again.stderr.strip().splitlines()[-1].startswith("report: ")
    run_page = open_page(repo / "reports" / "run.html", tmp_path / "run-again.png")
    assert run_page.errors == [] and len(run_page.images) >= 2  # the model as it stands, and the trend
    assert run_id in run_page.text and "Recent runs" in run_page.text


def test_killed_sweep_resumes_without_losing_or_double_billing(pipeline_repo):
    repo = pipeline_repo
    cmd = FRUGALML + ["sweep", "--set", SPACE, "--set", "sweep.sampler=grid", "--set", "sweep.max_trials=3"]
    log = open(repo / "sweep.log", "w")
    proc = subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 900
        records = repo / ".frugalml" / "sweeps"
        while time.time() < deadline:  # wait for the first trial to be recorded, then kill mid-second
            found = list(records.glob("*/record.json")) if records.exists() else []
            if found and len(json.loads(found[0].read_text())["trials"]) == 1:
                break
            time.sleep(0.5)
        pidfile = found[0].parent / "trial.pid"
        started = time.time() + 120  # the second trial starts (its process group is recorded) ...
        while not pidfile.exists() and time.time() < started and proc.poll() is None:
            time.sleep(0.2)
        assert pidfile.exists(), (repo / "sweep.log").read_text()[-3000:]
        time.sleep(1)  # ... and runs a little (a trial takes 10 s or more: `dvc exp run` alone)
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the hardest case
        proc.wait(timeout=60)
        leader_record = json.loads(pidfile.read_text())  # the trial's process group, left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    before = json.loads(found[0].read_text())
    states = [(t["number"], t["state"]) for t in before["trials"]]
    # killed mid-trial: the second as a rule, the third if the machine was slow to show us the second
    assert 1 <= len(before["trials"]) <= 2, f"{states}\n" + (repo / "sweep.log").read_text()[-3000:]
    done = before["trials"]

    res = run(FRUGALML + ["sweep", "--resume", "last"], repo, timeout=1500)
    # Gone: stopped by the resume, or ended on its own (its output pipe closed with the sweep)
    assert not ProcessRecord.from_dict(leader_record).matches()
    after = json.loads(found[0].read_text())
    assert after["status"] == "finished", res.stderr[-3000:]
    assert after["trials"][: len(done)] == done  # kept as they were: not run again, not billed again
    states = [t["state"] for t in after["trials"]]
    assert states.count("interrupted") == 1 and len([s for s in states if s != "interrupted"]) == 3
    # the trials, each once, and the data preparation before the first (billed to the sweep, item 10)
    spent = after.get("prep_usd", 0.0) + sum(t["usd"] for t in after["trials"])
    assert after["spent_usd"] == pytest.approx(spent, abs=1e-6) and after["prep_usd"] == before["prep_usd"] > 0


def test_sigterm_stops_the_running_trial_at_once_and_bills_it(pipeline_repo):
    """A scheduler's SIGTERM to the sweep stops the running trial now, not when it ends on its own
    (the trial pool used to wait for it), and the record bills the time it ran."""
    repo = pipeline_repo
    cmd = FRUGALML + ["sweep", "--set", "sweep.space={train.finetune: [full]}", "--set", "train.epochs=200"]
    log = open(repo / "sweep.log", "w")
    proc = subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=log, start_new_session=True)
    leader = None
    try:
        deadline = time.time() + 300
        pidfiles = []
        while not pidfiles and time.time() < deadline and proc.poll() is None:
            pidfiles = list((repo / ".frugalml" / "sweeps").glob("*/trial.pid"))
            time.sleep(0.2)
        assert pidfiles, (repo / "sweep.log").read_text()[-3000:]
        leader = ProcessRecord.from_dict(json.loads(pidfiles[0].read_text()))
        time.sleep(3)  # the trial runs (200 epochs: minutes)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)  # the sweep's own process only, as a scheduler does
        proc.wait(timeout=60)
        stopped_in = time.time() - t0
        trial_left = leader.matches()  # read before the clean-up below kills any leftover
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if leader is not None and leader.matches():  # the trial runs in a session of its own
            os.killpg(leader.pid, signal.SIGKILL)
        log.close()
    out = (repo / "sweep.log").read_text()
    assert stopped_in < 20, out[-3000:]
    assert not trial_left  # the trial's process group is gone
    record = json.loads(pidfiles[0].with_name("record.json").read_text())
    assert record["status"] == "interrupted" and "--resume" in out
    (trial,) = record["trials"]
    assert trial["state"] == "interrupted" and trial["usd"] > 0 and 3 <= trial["wall_s"] < 3 + stopped_in + 300
    assert record["spent_usd"] == pytest.approx(record.get("prep_usd", 0.0) + trial["usd"], abs=1e-6)


def test_a_rejected_experiment_completes_and_the_table_is_readable(pipeline_repo):
    """`dvc exp run` of a model the gate rejects is a completed experiment that lists its decision;
    `frugalml run` still exits 3; the table holds the headline figures, not every report field."""
    repo = pipeline_repo
    run(FRUGALML + ["storage", "configure"], repo)
    exp = run([str(BIN / "dvc"), "exp", "run", "-S", "gates.max_model_size_mb=1"], repo, check=False)
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert "package: REJECTED" in exp.stderr and "max_model_size_mb" in exp.stderr
    package = json.loads((repo / "metrics/package.json").read_text())
    assert package["packaged"] is False and "max_model_size_mb" in package["reason"]

    full = list(csv.reader(io.StringIO(run([str(BIN / "dvc"), "exp", "show", "--csv"], repo).stdout)))
    header = full[0]
    assert {"accuracy", "val_acc", "decision", "packaged", "total_usd", "usd.train"} <= set(header)
    assert not [c for c in header if c.startswith(("counts.", "per_class.", "s3_", "costs/train.json:"))]
    rows = list(csv.DictReader(io.StringIO(run(FRUGALML + ["exps", "--csv"], repo).stdout)))
    columns = list(rows[0])
    assert "gates.max_model_size_mb" in columns and "model.arch" not in columns  # the changed params only
    assert not [c for c in columns if "/" in c] and len(columns) <= 30, columns
    done = [r for r in rows if r["Experiment"] and r["decision"] == "reject"]
    assert len(done) == 1 and done[0]["packaged"] == "False" and float(done[0]["total_usd"]) > 0
    assert float(done[0]["usd.train"]) > 0 and float(done[0]["accuracy"]) > 0

    again = run(FRUGALML + ["run", "--set", "gates.max_model_size_mb=2"], repo, check=False)
    assert again.returncode == 3 and "gate rejected the model" in again.stderr, again.stderr[-3000:]


def test_resume_over_an_edited_space_says_to_start_a_new_sweep():
    """Trust round 2, item 13: Optuna's 'dynamic value space' (exit 1) becomes one line that says
    what to do (exit 2)."""
    import optuna

    from frugalml.core.errors import ConfigError
    from frugalml.decide import sweep

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sweep.suggest(trial, {"train.epochs": [2, 4]})
    study.tell(trial, 0.5)
    with pytest.raises(ConfigError) as e:
        sweep.suggest(study.ask(), {"train.epochs": [2, 4, 6]})
    assert e.value.exit_code == 2 and "run a new sweep (without --resume)" in str(e.value)


def test_a_sweep_takes_the_workspace_lock_as_a_run_does(tmp_path):
    """Trust round 2, item 4: `sweep --resume last` beside a live sweep killed its trial and failed
    its Optuna trials; a sweep beside `frugalml run` rewrote params.yaml under it. A sweep now
    takes the workspace lock: a second one exits 2 and touches nothing."""
    import subprocess
    import sys

    from frugalml.core.locks import RUN_LOCK, workspace_lock

    cli = [sys.executable, "-m", "frugalml.cli"]
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 2\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    with workspace_lock(tmp_path / RUN_LOCK, "frugalml run"):  # a run (or another sweep) in progress
        for args in (["sweep", "--set", "train.epochs=3"], ["sweep", "--resume", "last"]):
            res = subprocess.run(cli + args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
            assert res.returncode == 2 and "already running in this workspace" in res.stderr, res.stderr[-500:]
            assert "Traceback" not in res.stderr
    assert (tmp_path / "params.yaml").read_text() == "train:\n  epochs: 2\n"  # nothing written
    assert not (tmp_path / ".frugalml" / "sweeps").exists()


def test_a_trial_cut_short_is_not_recommended():
    """Trust round 2, item 11: a trial stopped by its budget (or pruned) passed the gate at a price
    `frontier --apply` + `frugalml run` does not reproduce (every epoch is trained then)."""
    budget = _t(0, 0.95, 0.002).model_copy(update={"stopped": "budget"})
    pruned = _t(1, 0.92, 0.001, state="pruned").model_copy(update={"stopped": "pruned"})
    early = _t(2, 0.93, 0.003).model_copy(update={"stopped": "early_stopping"})  # the settings reproduce it
    full = _t(3, 0.94, 0.004).model_copy(update={"stopped": "completed"})
    assert recommend([budget, pruned, full]) == 3
    assert recommend([budget, pruned, early, full]) == 2
    assert recommend([budget, pruned]) is None


def test_a_trial_is_billed_as_its_stages_are_gpu_and_spot_included():
    """Trust round 2, item 8: a trial was billed price({"wall_s": wall}): no GPU, no spot rates, so
    a sweep on a GPU recorded a fraction of its spend and its overhead went negative."""
    from frugalml.contracts import CostEntry
    from frugalml.core.config import CostsConfig
    from frugalml.core.costs import price
    from frugalml.decide.trials import trial_usd

    costs = CostsConfig(vcpus=8)
    train_entry = {"stage": "train", "run_id": "x-t0", "wall_s": 100.0, "gpu_s": 100.0}
    train = CostEntry(**train_entry, **price(train_entry, costs, "spot"))
    ev_entry = {"stage": "evaluate", "run_id": "x-t0", "wall_s": 10.0, "gpu_s": 10.0}
    ev = CostEntry(**ev_entry, **price(ev_entry, costs))
    usd = trial_usd(130.0, [train, ev], costs)
    rest = price({"wall_s": 20.0}, costs)["total_usd"]  # DVC and start-ups around the stages
    assert usd == pytest.approx(train.total_usd + ev.total_usd + rest, abs=2e-6)
    assert train.gpu_usd > 0 and usd > price({"wall_s": 130.0}, costs)["total_usd"]  # the GPU is billed
    assert usd - train.total_usd >= rest  # the overhead a trial adds is never negative


def test_the_screen_applies_to_several_starts_and_a_head_with_a_deeper_choice():
    from frugalml.core import config
    from frugalml.decide import screen

    def space_of(**space):
        return {k.replace("__", "."): v for k, v in space.items()}

    depths = ["last_n", "head", "full"]
    both = space_of(model__pretrained=["imagenet", "none"], model__image_size=[32, 64], train__finetune=depths)
    cfg = config.validate({"sweep": {"space": both}})
    assert screen.why_not(cfg, both) is None
    assert screen.starts(both) == [
        {"model.pretrained": p, "model.image_size": s} for p in ("imagenet", "none") for s in (32, 64)
    ]
    best = {"model.pretrained": "imagenet", "model.image_size": 64}
    assert [p["train.finetune"] for p in screen.plan(both, best)] == ["full", "last_n"]  # deepest first
    assert all(p["model.image_size"] == 64 for p in screen.plan(both, best))
    one_start = space_of(model__image_size=[32], train__finetune=["head", "full"])
    assert "one start" in screen.why_not(cfg, one_start)
    no_head = space_of(model__image_size=[32, 64], train__finetune=["last_n", "full"])
    assert "head and a deeper one" in screen.why_not(cfg, no_head)
    assert "off" in screen.why_not(config.validate({"sweep": {"space": both, "screen": False}}), both)
    assert "grid" in screen.why_not(config.validate({"sweep": {"space": both, "sampler": "grid"}}), both)
    from frugalml.contracts import ScreenResult

    def scored(size, acc, message=""):
        return ScreenResult(
            overrides=[f"model.image_size={size}"], val_accuracy=acc, usd=0.0, wall_s=1.0, message=message
        )

    sizes = {"model.image_size": [32, 64, 96], "train.finetune": ["head", "full"]}
    unscreened = scored(96, None, "weights not to be had offline")  # its start failed: never the best
    assert screen.best_start(sizes, [scored(32, 0.4), scored(64, 0.7), unscreened]) == {"model.image_size": 64}
    assert screen.best_start(sizes, [unscreened]) is None
    augmented = config.validate({"train": {"augment": {"rotation_deg": 30}, "finetune": "full"}})
    c = screen.screen_config(augmented, best)
    assert c.train.finetune == "head" and c.model.image_size == 64 and c.model.pretrained == "imagenet"
    assert config.feature_cache_off(c.train) is None  # the screen always runs on cached features
    assert augmented.train.augment.rotation_deg == 30  # the trials' own settings are untouched


def test_a_sweep_screens_its_starts_then_fine_tunes_the_best_one_first(pipeline_repo):
    """sweep.screen, for real: two starts (16 and 24 px) screened in the sweep's own process on
    the feature cache, billed to the record; the first trial (a DVC experiment) is the best start
    at the deepest fine-tuning of the space; the screen writes no model into the workspace."""
    repo = pipeline_repo
    space = "sweep.space={model.image_size: [16, 24], train.finetune: [head, full]}"
    sets = [space, "sweep.max_trials=1", "sweep.budget_usd=1", "sweep.pruner=none", "train.epochs=2"]
    res = run(FRUGALML + ["sweep", *(a for s in sets for a in ("--set", s))], repo, timeout=900)
    out = res.stderr
    assert "sweep: screening 2 starts" in out and "screen 2/2 model.image_size=24" in out, out[-4000:]
    sweep_id = sorted(p.name for p in (repo / ".frugalml" / "sweeps").iterdir())[-1]
    record = SweepRecord.model_validate_json((repo / ".frugalml" / "sweeps" / sweep_id / "record.json").read_text())
    assert [r.overrides for r in record.screen] == [["model.image_size=16"], ["model.image_size=24"]]
    assert all(0.0 <= r.val_accuracy <= 1.0 and r.usd > 0 and r.wall_s > 0 for r in record.screen)
    assert record.screen_usd >= sum(r.usd for r in record.screen) > 0
    best = max(record.screen, key=lambda r: r.val_accuracy).overrides
    assert len(record.trials) == 1 and record.trials[0].overrides == [*best, "train.finetune=full"]
    assert record.spent_usd == pytest.approx(record.prep_usd + record.screen_usd + record.trials[0].usd, abs=2e-6)
    assert len(list((repo / ".frugalml" / "features").glob("*.pt"))) == 2  # one per start, kept for the trials
    assert not (repo / "models" / "model.pt").exists()  # the trial ran in DVC's temporary copy, the screen in memory
    assert f"the screen of 2 starts ${record.screen_usd:.5f}" in out


def test_the_sweep_report_shows_the_screen_best_first_and_a_start_that_failed():
    from frugalml.contracts import ScreenResult
    from frugalml.core import config
    from frugalml.runs.report import sweep_html

    record = SweepRecord(
        id="s20261205-120000-ab12", created="2026-12-05T12:00:00Z", status="finished", space={}, budget_usd=1.0,
        max_trials=1, trials=[_t(0, 0.95, 0.010)], screen_usd=0.0004,
        screen=[
            ScreenResult(overrides=["model.image_size=32"], val_accuracy=0.41, usd=0.0001, wall_s=4.0),
            ScreenResult(overrides=["model.image_size=64"], val_accuracy=0.68, usd=0.0002, wall_s=8.0),
            ScreenResult(overrides=["model.image_size=96"], val_accuracy=None, usd=0, wall_s=0.1, message="no <w>"),
        ],
    )  # fmt: skip
    page = sweep_html(record, config.Params().gates)
    screen = page[page.index("<h2>Screen</h2>") :]
    assert screen.index("image_size=64") < screen.index("image_size=32") < screen.index("image_size=96")
    assert "no &lt;w&gt;" in screen and "0.6800" in screen and "why not screened" in screen
    clean = sweep_html(record.model_copy(update={"screen": record.screen[:2]}), config.Params().gates)
    assert "<h2>Screen</h2>" in clean and "why not screened" not in clean  # no failure: no empty column
    assert "<h2>Screen</h2>" not in sweep_html(record.model_copy(update={"screen": []}), config.Params().gates)

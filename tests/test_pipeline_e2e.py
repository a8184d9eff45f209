"""The whole pipeline on a tiny dataset in a temporary git repo: by `dvc repro` and by the Prefect flow."""

import json
import sys

import pytest

from tests.conftest import BIN, run

pytestmark = pytest.mark.slow
FRUGALML = [sys.executable, "-m", "frugalml.cli"]


def _params(repo):
    from frugalml.core import config

    return config.load(repo / "params.yaml")


ALL_VARIANTS = "compress.variants=[fp32, onnx, int8]"  # the tiny test repos build fp32 only


def _check_outputs(repo, store):
    ev = json.loads((repo / "metrics/eval.json").read_text())
    gate = json.loads((repo / "metrics/gate.json").read_text())
    pkg = json.loads((repo / "metrics/package.json").read_text())
    assert ev["accuracy"] >= 0.6 and 0 <= ev["macro_f1"] <= 1
    assert ev["latency_ms_p95"] >= ev["latency_ms_p50"] > 0
    assert gate["decision"] == "accept"
    for stage in ("ingest", "validate", "train", "evaluate", "compress", "gate", "package"):
        cost = json.loads((repo / "costs" / f"{stage}.json").read_text())
        assert cost["wall_s"] > 0 and cost["total_usd"] >= 0 and cost["peak_rss_mb"] > 0
    built = {v["name"]: v for v in json.loads((repo / "metrics/variants.json").read_text())["variants"]}
    assert set(built) == {"fp32", "onnx", "int8"} and all(v["status"] == "built" for v in built.values()), built
    # the same test images and model as evaluate (batching may flip one near-tie, no more)
    assert abs(built["fp32"]["accuracy"] - ev["accuracy"]) <= 1 / ev["test_images"] + 1e-9
    assert (
        abs(built["onnx"]["accuracy_delta"]) <= 0.02 and built["int8"]["size_bytes"] < 0.5 * built["onnx"]["size_bytes"]
    )
    chosen = json.loads((repo / "metrics/variants.json").read_text())["chosen"]
    plot = (repo / "plots/variants.csv").read_text().splitlines()  # the DVC plot: a row per variant
    assert plot[0].startswith("variant,usd_per_1k,accuracy") and len(plot) == 4
    assert [r.split(",")[0] for r in plot[1:] if r.endswith(",1")] == [chosen]
    assert (repo / "plots/variants.png").read_bytes()[:4] == b"\x89PNG"
    name, version = pkg["model"], pkg["version"]
    bento = store.head(f"bentos/{name}/{version}.bento")
    assert bento is not None and bento["ContentLength"] == pkg["bento_bytes"]
    record = store.get_json(f"registry/{name}/versions/{version}.json")
    assert record["bento_sha256"] == bento["Metadata"]["sha256"]
    assert record["metrics"]["accuracy"] == ev["accuracy"]
    assert record["lineage"]["git_commit"] and record["lineage"]["manifest_sha256"]
    assert sorted(record["classes"]) == ["blue", "green", "red"]
    return pkg


def test_dvc_repro_runs_everything_then_nothing(tmp_path, store, monkeypatch):
    # fine-tuned from "torchvision" weights served on loopback (see test_weights.py): the lineage
    # of the backbone reaches the registry version record and the bento's model metadata
    from tests.conftest import make_pipeline_repo
    from tests.test_weights import WeightsServer

    server = WeightsServer()
    try:
        name, data = server.add("resnet18")
        repo = make_pipeline_repo(
            tmp_path,
            store,
            extra=["model.pretrained=torchvision", f"model.weights_url={server.url(name)}", ALL_VARIANTS],
        )
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        run(FRUGALML + ["storage", "configure"], repo)
        config_local = (repo / ".dvc" / "config.local").read_text()
        assert "secret_access_key" not in config_local  # env credentials are not copied into files
        run([str(BIN / "dvc"), "repro"], repo)
    finally:
        server.close()
    pkg = _check_outputs(repo, store)
    import hashlib

    import yaml

    want = {
        "kind": "torchvision",
        "arch": "resnet18",
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": "download",
        "url": server.url(name),
    }
    assert json.loads((repo / "metrics/train.json").read_text())["pretrained"] == want
    record = store.get_json(f"registry/{pkg['model']}/versions/{pkg['version']}.json")
    assert record["lineage"]["pretrained"] == want
    bento = tmp_path / "b.bento"
    store.download(f"bentos/{pkg['model']}/{pkg['version']}.bento", bento)
    import tarfile

    with tarfile.open(bento) as tf:
        card = next(m for m in tf.getmembers() if m.name.endswith("model.yaml"))
        metadata = yaml.safe_load(tf.extractfile(card).read())["metadata"]
    assert metadata["lineage"]["pretrained"] == want
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "Running stage" not in again.stdout
    status = run([str(BIN / "dvc"), "status"], repo)
    assert "up to date" in status.stdout
    run([str(BIN / "dvc"), "push"], repo)
    assert any(store.list("dvc/files/md5/"))


def test_prefect_flow_runs_pipeline_records_run_and_rejects_bad_data(tmp_path, store):
    from tests.conftest import make_pipeline_repo

    repo = make_pipeline_repo(tmp_path, store, [ALL_VARIANTS])
    res = run(FRUGALML + ["run"], repo)
    out = res.stdout + res.stderr
    assert "Cost per stage" in out and "gate: ACCEPT" in out
    pkg = _check_outputs(repo, store)
    runs = sorted({o["key"].split("/")[1] for o in store.list("runs/") if o["key"].endswith("record.json")})
    assert len(runs) == 1
    rec = store.get_json(f"runs/{runs[0]}/record.json")
    assert rec["status"] == "succeeded" and rec["package"]["version"] == pkg["version"]
    # the cost table ends with serving's bill per variant, as measured by the compress stage
    variants = json.loads((repo / "metrics/variants.json").read_text())
    assert rec["variants"] == variants
    line = next(x for x in out.splitlines() if x.startswith("serving, USD per 1k predictions:"))
    for v in variants["variants"]:
        assert f"{v['name']} ${v['usd_per_1k']:.6f}" in line, line
    assert f"serving {variants['chosen']} (" in line
    assert [s["stage"] for s in rec["stages"]] == [
        "ingest",
        "validate",
        "train",
        "evaluate",
        "compress",
        "gate",
        "package",
        "dvc push",
        "orchestration",
    ]
    assert all(s["status"] == "ran" for s in rec["stages"])
    assert rec["orchestrator"] == "prefect"
    assert rec["dvc_push"]["objects"] >= 3 and rec["dvc_push"]["bytes"] > 0  # prepared data, manifest, model
    assert rec["storage"]["stored_bytes"] > rec["dvc_push"]["bytes"]  # plus checkpoints, bento, registry
    cost_metrics = json.loads((repo / "metrics/costs.json").read_text())
    assert cost_metrics["total_usd"] == rec["total_usd"]
    assert cost_metrics["usd"] == {s["stage"]: s["usd"] for s in rec["stages"]}
    assert "costs.json" in run([str(BIN / "dvc"), "metrics", "show"], repo).stdout

    # Nothing changed: one `dvc status`, no stage process, recorded as "no change".
    again = run(FRUGALML + ["run"], repo)
    assert "no change: every stage was up to date" in again.stderr and "Running stage" not in again.stderr
    runs = sorted({o["key"].split("/")[1] for o in store.list("runs/") if o["key"].endswith("record.json")})
    unchanged = store.get_json(f"runs/{runs[-1]}/record.json")
    assert unchanged["no_change"] is True
    # Trust item 14: a no-change run leaves only its record; the first run's checkpoints are gone
    assert unchanged["storage"]["by_kind"] == {
        "dvc": 0,
        "checkpoints": 0,
        "bento": 0,
        "run_record": unchanged["storage"]["stored_bytes"],
    }
    assert rec["storage"]["by_kind"]["checkpoints"] == 0 and rec["storage"]["by_kind"]["bento"] > 0
    assert not list(store.list(f"checkpoints/{rec['run_id']}/"))
    assert [s["stage"] for s in unchanged["stages"] if s["usd"] > 0] == ["orchestration"]
    assert unchanged["total_usd"] < rec["total_usd"] / 20
    assert rec["flow_run_id"]
    assert store.exists(f"runs/{runs[0]}/dvc.lock") and store.exists(f"runs/{runs[0]}/metrics/eval.json")
    assert "secret" not in json.dumps(rec).lower()
    assert any(store.list("dvc/files/md5/"))  # the flow pushed data and model
    status = run([str(BIN / "dvc"), "status"], repo)
    assert "up to date" in status.stdout

    # The recorded run reproduces exactly: same commit, params and dvc.lock, data pulled from DVC.
    rep = run(FRUGALML + ["reproduce", runs[0]], repo)
    assert "reproduced: train and evaluation metrics are identical" in rep.stderr
    assert not (repo / ".frugalml" / "reproduce").exists() or not any((repo / ".frugalml" / "reproduce").iterdir())

    # Promote it, then warm-start a second run from the production model: the new model is
    # scored against that champion on the same test images.
    run(FRUGALML + ["promote", pkg["version"], "--to", "production"], repo)
    # Trust item 6: the champion is a tracked input: after a promotion evaluate is stale
    assert json.loads((repo / "models/champion.json").read_text())["version"] == pkg["version"]
    stale = run([str(BIN / "dvc"), "status", "evaluate"], repo).stdout
    assert "models/champion.json" in stale and "modified" in stale, stale
    name = _params(repo).model.name
    res = run(
        FRUGALML
        + [
            "run",
            "--set",
            f"model.pretrained=registry:{name}@production",
            "--set",
            "train.epochs=1",
            "--set",
            "gates.max_regression=null",
            "--until",
            "evaluate",  # what this run checks: the start and the comparison with the champion
        ],
        repo,
    )
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["start"].startswith(f"registry:{name}@{pkg['version']}") and "all weights" in train["start"]
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert ev["champion"]["version"] == pkg["version"] and ev["champion"]["comparable"] is True
    assert ev["delta_vs_champion"]["accuracy"] == pytest.approx(ev["accuracy"] - ev["champion"]["accuracy"])
    assert (repo / "plots/confusion.png").stat().st_size > 0

    # A run the data validation rejects: exit 3, readable reason, no traceback, still recorded.
    bad = run(FRUGALML + ["run", "--set", "validate.min_images_per_class=1000"], repo, check=False)
    assert bad.returncode == 3, bad.stderr[-3000:]
    assert "minimum images per class" in bad.stderr
    assert "Traceback" not in bad.stderr
    runs = sorted({o["key"].split("/")[1] for o in store.list("runs/") if o["key"].endswith("record.json")})
    assert len(runs) == 4
    rejected = store.get_json(f"runs/{runs[-1]}/record.json")
    assert rejected["status"] == "rejected"
    # A validation failure is a user error: not retried.
    assert bad.stderr.count("Running stage 'validate'") == 1 and "will start" not in bad.stdout + bad.stderr


def test_cli_reports_config_errors_without_traceback(pipeline_repo):
    res = run(FRUGALML + ["run", "--set", "train.epochs=zero"], pipeline_repo, check=False)
    assert res.returncode == 2
    assert "train.epochs" in res.stderr and "Traceback" not in res.stderr
    cron = run(FRUGALML + ["schedule", "--cron", "61 * * *"], pipeline_repo, check=False)
    assert cron.returncode == 2 and "Invalid cron string" in cron.stderr and "Traceback" not in cron.stderr


def test_dvc_sees_new_source_images_and_ingests_only_those(pipeline_repo, store, tmp_path):
    from tests.conftest import make_dataset

    repo = pipeline_repo
    run(FRUGALML + ["storage", "configure"], repo)
    run([str(BIN / "dvc"), "repro", "ingest"], repo)
    first = json.loads((repo / "metrics/ingest.json").read_text())["counts"]
    assert first["decoded"] == 90 and first["new"] == 90
    assert "up to date" in run([str(BIN / "dvc"), "status", "ingest"], repo).stdout

    extra = make_dataset(tmp_path / "extra", per_class=4, seed=123)
    new_files = sorted(extra.rglob("*.png"))[:10]
    for p in new_files:  # 10 new images in the existing class folders
        store.put_bytes(f"sources/tiny/{p.parent.name}/new_{p.name}", p.read_bytes())
    status = run([str(BIN / "dvc"), "status", "ingest"], repo).stdout
    assert "remote://source" in status
    run([str(BIN / "dvc"), "repro", "ingest"], repo)
    second = json.loads((repo / "metrics/ingest.json").read_text())["counts"]
    assert second["decoded"] == 10 and second["new"] == 10
    assert second["reused_unchanged"] == 90 and second["images"] == 100


def test_costs_command_reads_run_records(pipeline_repo, store):
    import uuid as _uuid

    # Two small records written the way the flow writes them (the flow itself is covered above).
    from frugalml.contracts import RunRecord
    from frugalml.runs.records import write_record

    for i, (status, ran) in enumerate([("succeeded", "ran"), ("succeeded", "up to date")]):
        stages = [
            {
                "stage": s,
                "status": ran,
                "wall_s": 1.0,
                "cpu_s": 1.0,
                "peak_rss_mb": 10,
                "usd": 0.5 if ran == "ran" else 0.0,
                "labeling_usd": 0.25 if (s == "ingest" and ran == "ran") else 0.0,
            }
            for s in ("ingest", "train")
        ]
        rid = f"2026010{i}T000000Z-{_uuid.uuid4().hex[:6]}"
        write_record(
            store,
            rid,
            RunRecord.model_validate(
                {
                    "run_id": rid,
                    "status": status,
                    "no_change": ran != "ran",
                    "stages": stages,
                    "total_usd": sum(s["usd"] for s in stages),
                    "wall_s": 2.0,
                    "gate": None,
                    "message": "",
                }
            ),
            [],
        )
    res = run(FRUGALML + ["costs", "--last", "2", "--json"], pipeline_repo)
    recs = json.loads(res.stdout)
    assert [r["total_usd"] for r in recs] == [1.0, 0.0] and recs[1]["no_change"] is True
    table = run(FRUGALML + ["costs", "--last", "2"], pipeline_repo).stderr
    assert "Cost trend" in table and "no change" in table
    assert "0.50000" in table and " 1.00 " in table  # per-stage cost; the total (dollars and up: 2 decimals)
    png = pipeline_repo / "cost-per-run.png"
    run(FRUGALML + ["costs", "--last", "2", "--plot", str(png)], pipeline_repo)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = run(FRUGALML + ["costs", "--run", recs[0]["run_id"]], pipeline_repo).stderr
    assert "Cost per stage" in one and "ingest" in one


def test_failed_dvc_push_still_records_the_run_and_is_not_retried(pipeline_repo, store):
    """Trust item 11: DVC's remote refuses our credentials (a user's own key in config.local,
    which frugalml leaves alone): the run fails at the push, is not retried (not transient),
    and its record is written all the same, saying what was done."""
    repo = pipeline_repo
    run([str(BIN / "dvc"), "remote", "modify", "--local", "storage", "access_key_id", "wrong-key"], repo)
    run([str(BIN / "dvc"), "remote", "modify", "--local", "storage", "secret_access_key", "wrong-secret"], repo)
    res = run(FRUGALML + ["run", "--until", "ingest"], repo, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "dvc push failed (not retried" in out and "Retry 1/3" not in out, out[-3000:]
    runs = sorted({o["key"].split("/")[1] for o in store.list("runs/") if o["key"].endswith("record.json")})
    assert len(runs) == 1
    rec = store.get_json(f"runs/{runs[0]}/record.json")
    assert rec["status"] == "failed" and "dvc push" in rec["message"]
    assert [s["stage"] for s in rec["stages"]][:1] == ["ingest"] and rec["stages"][0]["status"] == "ran"


def test_a_local_prefect_server_that_does_not_come_up_says_why(tmp_path):
    """`frugalml run`'s own Prefect server: one that exited and one not ready in time are told
    apart in the one-line error, and the process is stopped either way."""
    from flows.local_server import LocalPrefectServer
    from frugalml.core.errors import FrugalError

    server = LocalPrefectServer(tmp_path / "prefect-server.log")
    with pytest.raises(FrugalError, match=r"did not start: not ready after 0 s"):
        server.wait_ready(timeout_s=0.01)  # a real server needs seconds to migrate its database
    assert server.proc.wait(timeout=30) is not None

    server = LocalPrefectServer(tmp_path / "prefect-server.log")
    server.proc.kill()
    server.proc.wait(timeout=30)
    with pytest.raises(FrugalError, match=r"did not start: it exited with code -9"):
        server.wait_ready(timeout_s=30)

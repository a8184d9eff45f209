"""Training: determinism, resume after SIGKILL (locally and from S3), fine-tuning strategies, DDP."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from frugalml.core import config
from frugalml.core.costs import CostMeter
from tests.conftest import make_dataset

BASE = [
    "model.arch=resnet18",
    "model.pretrained=none",
    "model.image_size=16",
    "train.batch_size=16",
    "validate.min_images_per_class=3",
    "train.num_threads=2",
]


def _workspace(path: Path, *overrides: str, per_class: int = 20) -> Path:
    from tasks import ingest

    path.mkdir(parents=True, exist_ok=True)
    src = make_dataset(path / "src", per_class=per_class)
    config.write_overrides(_params(path), [f"data.source={src}", *BASE, *overrides])
    cwd = os.getcwd()
    os.chdir(path)
    try:
        with CostMeter("ingest", "t") as m:
            ingest.run(config.load(), m)
    finally:
        os.chdir(cwd)
    return path


def _params(path: Path) -> Path:
    f = path / "params.yaml"
    if not f.exists():
        f.write_text("train:\n  epochs: 2\n")
    return f


def _train(path: Path, env=None, check=True):
    res = subprocess.run(
        [sys.executable, "-m", "tasks.train"],
        cwd=path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **(env or {})},
        timeout=600,
    )
    if check and res.returncode:
        raise AssertionError(res.stderr[-4000:])
    return res


def _weights(path: Path) -> dict:
    return torch.load(path / "models" / "model.pt", weights_only=True)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cpu_training_is_bitwise_deterministic(tmp_path):
    a = _workspace(tmp_path / "a", "train.epochs=2")
    b = _workspace(tmp_path / "b", "train.epochs=2")
    _train(a)
    _train(b)
    assert _same(_weights(a), _weights(b))
    import json

    ra, rb = (json.loads((p / "metrics/train.json").read_text()) for p in (a, b))
    for k in ("final_train_loss", "final_train_acc", "final_val_acc"):
        assert ra[k] == rb[k]
    assert (a / "plots/train.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")


def test_killed_training_resumes_to_the_same_weights(tmp_path, s3_server):
    ref = _workspace(tmp_path / "ref", "train.epochs=5", per_class=60)
    _train(ref)
    work = _workspace(tmp_path / "work", "train.epochs=5", per_class=60)
    run_id = f"resume-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "FRUGALML_RUN_ID": run_id}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.train"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = work / ".frugalml" / "checkpoints"
    seen: set = set()
    deadline = time.time() + 300
    while time.time() < deadline and len(seen) < 2 and proc.poll() is None:
        for f in ckpts.glob("*/last.pt"):
            seen.add(f.stat().st_mtime_ns)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert not (work / "models" / "model.pt").exists()

    # First restart on "another machine": the local checkpoint is gone, S3 has it.
    import shutil

    shutil.rmtree(ckpts)
    res = _train(work, env={"FRUGALML_RUN_ID": run_id})
    assert "resuming after epoch" in res.stderr
    assert _same(_weights(ref), _weights(work))
    assert not list(ckpts.glob("*/last.pt"))  # a finished training leaves no resume point
    # Trust item 14: nor does it leave checkpoints in the store (train.keep_checkpoints: false)
    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store

    assert list(Store.from_config(StorageConfig()).list(f"checkpoints/{run_id}/")) == []


def test_a_spot_notice_stops_training_as_transient_and_the_ledger_prices_the_lost_work(tmp_path, s3_server):
    """SIGTERM after the first checkpoint: exit 75 (transient), a ledger at spot prices naming the
    seconds no checkpoint kept; the retry resumes and loses nothing."""
    from frugalml.contracts import CostEntry, StageStatus

    work = _workspace(tmp_path / "spot", "train.epochs=2", "train.capacity=spot", "train.batch_size=4")
    run_id = f"spot-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "FRUGALML_RUN_ID": run_id}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(work.glob(".frugalml/checkpoints/*/last.pt")):
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2: work that no checkpoint holds yet
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    assert "stopped by SIGTERM in epoch 2" in stderr and "Traceback" not in stderr
    assert StageStatus.read(work / ".frugalml" / "status" / "train.json").transient is True
    lost = CostEntry.read(work / "costs" / "train.json")
    assert lost.capacity == "spot" and lost.exit_code == 75
    assert 0 < lost.lost_s < lost.wall_s - lost.startup_s  # the part of epoch 2 that ran, not the whole attempt
    assert lost.total_usd < lost.on_demand_usd  # spot rates, against the kept work on demand

    res = _train(work, env={"FRUGALML_RUN_ID": run_id})
    assert "resuming after epoch 1" in res.stderr
    done = CostEntry.read(work / "costs" / "train.json")
    assert done.exit_code == 0 and done.capacity == "spot"
    assert 0 < done.lost_s < done.wall_s  # its start until the resume: paid again because of the stop


def test_item14_keep_checkpoints_keeps_only_the_last_one(tmp_path, s3_server):
    """Trust item 14: during training only the newest epoch stays in S3; keep_checkpoints keeps it."""
    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store

    work = _workspace(tmp_path / "keep", "train.epochs=3", "train.keep_checkpoints=true")
    run_id = f"keep-{uuid.uuid4().hex[:6]}"
    _train(work, env={"FRUGALML_RUN_ID": run_id})
    keys = sorted(o["key"].rsplit("/", 1)[1] for o in Store.from_config(StorageConfig()).list(f"checkpoints/{run_id}/"))
    assert keys == ["epoch-0003.pt", "latest.json"]


def test_head_and_last_n_freeze_the_rest(tmp_path):
    from frugalml.model.modeling import build_model, param_groups

    model = build_model("resnet18", 3)
    groups = param_groups(model, "head", 1, 0.01, 0.1)
    assert [g["name"] for g in groups] == ["head"]
    assert not any(p.requires_grad for p in model.layer4.parameters())
    groups = param_groups(model, "last_n", 1, 0.01, 0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.01), ("backbone", pytest.approx(0.001))]
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not any(p.requires_grad for p in model.layer3.parameters())
    mob = build_model("mobilenet_v3_small", 3)
    param_groups(mob, "last_n", 2, 0.01, 1.0)
    assert all(p.requires_grad for p in mob.features[-1].parameters())
    assert not any(p.requires_grad for p in mob.features[0].parameters())
    # a timm backbone: its stages (blocks), then what follows them (conv_head, bn2) as the last block
    lite = build_model("timm/tf_efficientnet_lite0", 3)
    assert head_module_path(lite) == "classifier" and lite.classifier.out_features == 3
    param_groups(lite, "last_n", 1, 0.01, 1.0)
    trainable = {n.split(".")[0] for n, p in lite.named_parameters() if p.requires_grad}
    assert trainable == {"conv_head", "bn2", "classifier"}
    param_groups(lite, "last_n", 2, 0.01, 1.0)
    assert all(p.requires_grad for p in lite.blocks[-1].parameters())
    assert not any(p.requires_grad for p in lite.blocks[-2].parameters())
    assert not any(p.requires_grad for p in lite.conv_stem.parameters())


def head_module_path(model) -> str:
    from frugalml.model.modeling import head_module

    return head_module(model)[0]


def test_ddp_with_two_cpu_processes_produces_a_valid_model(tmp_path):
    work = _workspace(tmp_path / "ddp", "train.epochs=2", "train.distributed.nproc_per_node=2", "train.num_threads=1")
    res = _train(work)
    assert "launching 2 processes with torchrun" in res.stderr
    import json

    report = json.loads((work / "metrics/train.json").read_text())
    assert report["processes"] == 2
    from frugalml.model.modeling import load_model

    model, meta = load_model(work / "models" / "model.pt")
    assert meta["classes"] == ["blue", "green", "red"]
    out = model(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_early_stopping_stops_when_validation_stalls(tmp_path):
    import json

    work = _workspace(
        tmp_path / "es",
        "train.epochs=6",
        "train.lr=0.0000001",
        "train.schedule=constant",
        "train.early_stopping.patience=1",
        "train.early_stopping.metric=val_loss",
        "train.early_stopping.min_delta=0.5",
    )
    res = _train(work)
    report = json.loads((work / "metrics/train.json").read_text())
    assert report["stopped_early"] is True and report["epochs_run"] == 2
    assert "early stop after epoch 2" in res.stderr


def test_class_weights_are_inverse_frequency():
    from frugalml.model.parts import class_weights as _class_weights

    rows = (
        [{"split": "train", "label": "a"}] * 30
        + [{"split": "train", "label": "b"}] * 10
        + [{"split": "test", "label": "b"}] * 50
    )
    w = _class_weights(rows, ["a", "b"])
    assert w.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])


def test_warm_start_keeps_backbone_when_classes_change():
    from frugalml.model.modeling import build_model, warm_start

    old = build_model("resnet18", 3)
    blob = {"state_dict": old.state_dict(), "classes": ["a", "b", "c"]}
    same = build_model("resnet18", 3)
    assert warm_start(same, blob, ["a", "b", "c"]) == "all weights"
    assert torch.equal(same.fc.weight, old.fc.weight)
    new = build_model("resnet18", 4)
    how = warm_start(new, blob, ["a", "b", "c", "d"])
    assert "head re-initialised" in how
    assert torch.equal(new.layer4[1].conv2.weight, old.layer4[1].conv2.weight)
    assert new.fc.weight.shape == (4, 512)


def _publish(store, name: str, workspace: Path) -> None:
    """A trained workspace's model as version v1 of ``name``, laid out as the package stage
    publishes it: a bento archive holding models/<tag>/model.pt, then the version record."""
    import io
    import tarfile

    from frugalml.core.registry import Registry

    data = (workspace / "models" / "model.pt").read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("models/teacher/v1/model.pt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    store.put_bytes(f"bentos/{name}/v1.bento", buf.getvalue())
    Registry(store, name).register("v1", {"version": "v1", "run_id": "teacher", "lineage": {"model_sha256": "t"}})


def _rotate_labels(workspace: Path) -> None:
    """Every image gets the next class's label: the hard targets are all wrong."""
    import csv

    path = workspace / "data" / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    classes = sorted({r["label"] for r in rows})
    for r in rows:
        r["label"] = classes[(classes.index(r["label"]) + 1) % len(classes)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_distillation_learns_from_the_teacher_alone_at_alpha_1(tmp_path, s3_server):
    """train.distill_from: a resnet18 teacher (16 px) from the registry teaches an ImageNet-initialised
    timm tf_efficientnet_lite0 student (32 px: the teacher's input is resized). At alpha 1 the
    labels play no part: a student trained on all-wrong labels ends bitwise equal to one trained
    on the right ones, and both differ from a student trained without the teacher."""
    import json

    from frugalml.core.config import StorageConfig
    from frugalml.core.store import Store

    store = Store.from_config(StorageConfig())  # where the workspaces' params point
    name = f"teacher-{uuid.uuid4().hex[:6]}"
    teacher = _workspace(tmp_path / "teacher", "train.epochs=3")
    _train(teacher)
    _publish(store, name, teacher)
    student = [
        "model.arch=timm/tf_efficientnet_lite0",
        "model.pretrained=imagenet",
        "model.image_size=32",
        "train.epochs=2",
    ]
    distil = [*student, f"train.distill_from=registry:{name}@v1", "train.distill_alpha=1.0"]
    right = _workspace(tmp_path / "right", *distil)
    wrong = _workspace(tmp_path / "wrong", *distil)
    _rotate_labels(wrong)
    plain = _workspace(tmp_path / "plain", *student)
    for w in (right, wrong, plain):
        _train(w)
    assert _same(_weights(right), _weights(wrong))
    assert not _same(_weights(right), _weights(plain))
    report = json.loads((right / "metrics/train.json").read_text())
    assert report["distilled_from"] == {"ref": f"registry:{name}@v1", "arch": "resnet18", "sha256": "t"}
    assert report["arch"] == "timm/tf_efficientnet_lite0" and report["feature_cache"] == "off"
    assert "distilled_from" not in json.loads((plain / "metrics/train.json").read_text())  # None is not written

    # A teacher that knows other classes is refused, in one line, before training starts.
    other = _workspace(tmp_path / "other", *distil)
    (other / "data" / "manifest.csv").write_text(
        (other / "data" / "manifest.csv").read_text().replace(",red,", ",crimson,")
    )
    res = _train(other, check=False)
    assert res.returncode != 0 and "a teacher must know the same classes" in res.stderr
    assert "Traceback" not in res.stderr


def test_distill_loss_is_the_temperature_scaled_mixture():
    from frugalml.model.distillation import DistillLoss

    torch.manual_seed(0)
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce = torch.nn.CrossEntropyLoss()
    loss = DistillLoss(ce, temperature=2.0, alpha=0.25)(s, y, t)
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    assert loss.item() == pytest.approx(0.25 * 4 * kl.item() + 0.75 * ce(s, y).item(), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_scores_match_scikit_learn(seed):
    """evaluate computes its scores from the confusion matrix (importing scikit-learn cost every
    evaluate stage 0.6 s): the same figures as scikit-learn's, with its zero_division=0, also for a
    class never predicted and a class absent from the test split."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    from frugalml.ship.evaluation import quality

    rng = np.random.default_rng(seed)
    n, classes = 500, ["a", "b", "c", "d", "e", "never-seen"]
    y_true = rng.choice(5, n, p=[0.4, 0.3, 0.15, 0.1, 0.05]).tolist()  # "never-seen" has no image
    logits = torch.tensor(rng.normal(size=(n, 6)), dtype=torch.float32)
    logits[:, 3] -= 10  # "d" is never predicted
    logits[torch.arange(n), torch.tensor(y_true)] += 1.0
    probs = logits.softmax(1)
    y_pred = probs.argmax(1).tolist()
    q = quality(y_true, probs, classes)
    labels = list(range(6))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert q["accuracy"] == round(accuracy_score(y_true, y_pred), 6)
    assert q["macro_f1"] == round(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0), 6)
    for i, c in enumerate(classes):
        assert q["per_class"][c] == {
            "precision": round(p[i], 6),
            "recall": round(r[i], 6),
            "f1": round(f[i], 6),
            "support": int(s[i]),
        }
    assert q["per_class"]["d"]["precision"] == 0.0 and q["per_class"]["never-seen"]["support"] == 0

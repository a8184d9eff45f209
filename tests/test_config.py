from pathlib import Path

import pytest

from frugalml.core import config
from frugalml.core.errors import ConfigError


def test_repo_params_yaml_is_valid():
    p = config.load(config.PARAMS_FILE)
    assert p.data.source.startswith("s3://")
    assert p.storage.bucket == "frugalml"


def test_unknown_key_names_its_path(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert "train.epochz: unknown key" in str(e.value)


def test_wrong_value_says_what_was_expected(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  lr: -1\nmodel:\n  arch: vgg11\n")
    with pytest.raises(ConfigError) as e:
        config.load(f)
    msg = str(e.value)
    assert "train.lr: Input should be greater than 0" in msg
    assert "model.arch" in msg and "resnet18" in msg


def test_splits_must_sum_to_one(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data:\n  splits: {train: 0.8, val: 0.2, test: 0.2}\n")
    with pytest.raises(ConfigError, match="must be 1.0"):
        config.load(f)


def test_overrides_are_typed_and_validated(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: 2\n")
    assert config.load(f, ["train.epochs=5"]).train.epochs == 5
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.load(f, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs"):
        config.load(f, ["train.epochs=many"])


def test_write_overrides_keeps_comments_and_refuses_bad_values(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: 2   # how long\n  lr: 0.1\n")
    config.write_overrides(f, ["train.epochs=7"])
    text = f.read_text()
    assert "epochs: 7" in text and "# how long" in text
    with pytest.raises(ConfigError):
        config.write_overrides(f, ["train.epochs=-3"])
    assert "epochs: 7" in f.read_text()  # a rejected override leaves the file alone


def test_credentials_are_not_config_keys(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("storage:\n  secret_access_key: abc\n")
    with pytest.raises(ConfigError, match="storage.secret_access_key: unknown key"):
        config.load(f)


def test_the_stage_list_is_the_order_of_dvc_yaml():
    import yaml

    from frugalml.contracts import STAGES

    dvc = yaml.safe_load((Path(__file__).resolve().parent.parent / "dvc.yaml").read_text())
    assert tuple(dvc["stages"]) == STAGES


def test_a_contract_file_with_a_renamed_field_is_a_clear_error(tmp_path):
    """What stages pass each other is validated on read: a renamed field fails there, by name."""
    import json

    from frugalml.contracts import GateDecision
    from frugalml.core.errors import DataError

    good = {"decision": "accept", "failed": [], "checks": [], "serving_usd_per_1k": 0.1, "train_usd": 0.01}
    path = tmp_path / "gate.json"
    GateDecision.model_validate(good).write(path)
    assert GateDecision.read(path).decision == "accept"
    renamed = {**{k: v for k, v in good.items() if k != "decision"}, "verdict": "accept"}
    path.write_text(json.dumps(renamed))
    with pytest.raises(DataError) as e:
        GateDecision.read(path)
    assert str(path) in str(e.value) and "GateDecision" in str(e.value) and "\n" not in str(e.value)
    assert "decision: Field required" in str(e.value) and "verdict" in str(e.value)
    with pytest.raises(DataError, match="missing"):
        GateDecision.read(tmp_path / "absent.json")


def test_params_yaml_is_written_from_the_config_models_and_every_key_is_described():
    """Issue 30, item 7: each key is described once (the docstring under it in frugalml/core/config/);
    params.yaml lists every section at its defaults with that description as its comment, and the
    docs' reference shows the same. A key added without a description, or a params.yaml edited by
    hand, fails here: `python -m frugalml.core.paramsdoc --write` rewrites it."""
    from frugalml.core import paramsdoc

    undescribed = [k.path for k in paramsdoc.keys() if not k.description]
    assert not undescribed, undescribed
    assert Path("params.yaml").read_text() == paramsdoc.params_yaml(), "run: python -m frugalml.core.paramsdoc --write"
    sections = {k.path for k in paramsdoc.keys() if "." not in k.path}
    assert "orchestration" in sections and len(sections) == 14
    page = paramsdoc.reference_markdown()
    for k in paramsdoc.keys():  # each key in its section's table
        parent, _, name = k.path.rpartition(".")
        table = page.split(f"## `{parent}`\n")[1].split("\n## ")[0] if parent else page
        assert f"## `{k.path}`" in page if k.section else f"| `{name}` |" in table, k.path

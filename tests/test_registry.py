"""Registry: immutable versions, aliases by compare-and-swap, promote/force/rollback via the CLI."""

import subprocess
import sys
import threading
import uuid

import pytest

from frugalml.core.registry import Registry, RegistryError


def _registry(store) -> Registry:
    reg = Registry(store, f"m-{uuid.uuid4().hex[:6]}")
    return reg


def _record(version, decision="accept"):
    return {
        "version": version,
        "metrics": {"accuracy": 0.9},
        "run_id": "r",
        "gate": {"decision": decision, "failed": [] if decision == "accept" else ["min_accuracy"]},
    }


def test_versions_are_immutable(store):
    reg = _registry(store)
    reg.register("v1", _record("v1"))
    other = {**_record("v1"), "run_id": "another run"}  # the same run's replay is not an error (Trust item 5)
    with pytest.raises(RegistryError, match="immutable"):
        reg.register("v1", other)
    assert reg.versions() == ["v1"] and reg.get("v1")["run_id"] == "r"


def test_eight_concurrent_promoters_lose_no_update(store):
    reg = _registry(store)
    versions = [f"v{i}" for i in range(8)]
    for v in versions:
        reg.register(v, _record(v))
    barrier = threading.Barrier(8)
    errors = []

    def promote(v):
        from frugalml.core.store import Store

        mine = Registry(Store(store.settings), reg.model)  # one client per promoter
        barrier.wait()
        try:
            mine.promote(v, "production")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pointer, _ = reg.alias("production")
    chain = pointer["history"] + [pointer["version"]]
    assert sorted(chain) == versions  # every promotion is in the history exactly once
    promotions = [e for e in reg.events() if e["action"] == "promote"]
    assert len(promotions) == 8
    # each event's "previous" is the version the alias held just before: the chain links up
    assert sorted(e["previous"] or "" for e in promotions) == sorted([""] + chain[:-1])


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "frugalml.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_promote_force_and_rollback_via_cli(store, tmp_path):
    reg = _registry(store)
    reg.register("good", _record("good"))
    reg.register("bad", _record("bad", "reject"))
    (tmp_path / "params.yaml").write_text(f"model:\n  name: {reg.model}\nstorage:\n  prefix: {store.prefix}\n")
    assert _cli(["promote", "good", "--to", "production"], tmp_path).returncode == 0
    res = _cli(["promote", "bad", "--to", "production"], tmp_path)
    assert res.returncode == 2 and "rejected by the gate" in res.stderr and "Traceback" not in res.stderr
    res = _cli(["promote", "bad", "--to", "production", "--force"], tmp_path)
    assert res.returncode == 2 and "--reason" in res.stderr
    res = _cli(["promote", "bad", "--to", "production", "--force", "--reason", "hotfix for customer X"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert reg.alias("production")[0]["version"] == "bad"
    forced = [e for e in reg.events() if e["action"] == "promote" and e["forced"]]
    assert forced and forced[0]["reason"] == "hotfix for customer X"
    res = _cli(["rollback", "production"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert reg.alias("production")[0]["version"] == "good"
    listing = _cli(["models", "list"], tmp_path).stdout
    assert "good" in listing and "production" in listing
    res = _cli(["rollback", "production"], tmp_path)
    assert res.returncode == 2 and "no previous version" in res.stderr

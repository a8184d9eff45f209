"""infra/k8s: what can be checked without a cluster. The work pools' base job templates are
rendered by prefect-kubernetes' own job configuration code; the platform manifests parse and
keep secrets out and services inside the cluster."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "infra" / "k8s"
PLACEHOLDER = re.compile(r"{{\s*([\w.]+)\s*}}")


def _placeholders(node) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set(PLACEHOLDER.findall(node)) if isinstance(node, str) else set()


def _render(template: dict, values: dict) -> dict:
    """What the worker builds for a flow run: the values applied to the template (Prefect's own
    templating), then validated into prefect-kubernetes' job configuration."""
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    return KubernetesWorkerJobConfiguration(**apply_values(template, values)).job_manifest


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_pool_templates_match_the_kubernetes_worker_schema(pool):
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    template = json.loads((K8S / f"pool-{pool}.json").read_text())
    props = template["variables"]["properties"]
    # the worker reads the same top-level keys, and every variable it knows is still declared
    assert template["job_configuration"].keys() == default["job_configuration"].keys()
    assert set(default["variables"]["properties"]) <= set(props)
    # every placeholder is a declared variable, and every default satisfies its own schema
    assert _placeholders(template["job_configuration"]) <= set(props)
    for schema in props.values():
        if "default" in schema and "$ref" not in json.dumps(schema):
            jsonschema.validate(schema["default"], schema)

    values = {k: s["default"] for k, s in props.items() if "default" in s}
    manifest = _render(template["job_configuration"], values)
    spec = manifest["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["nodeSelector"] == {"frugalml.io/pool": pool}
    assert container["envFrom"] == [{"secretRef": {"name": "frugalml-s3"}}]
    assert manifest["metadata"]["namespace"] == "frugalml"
    if pool == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {t["key"] for t in spec["tolerations"]} >= {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
        preferred = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert preferred["weight"] == 100
        assert preferred["preference"]["matchExpressions"][0]["values"] == ["spot"]
        assert spec["terminationGracePeriodSeconds"] == 120  # AWS's spot notice
        # a pool's job variables override the defaults per deployment
        two = _render(template["job_configuration"], {**values, "gpu_count": 2, "spot_preference_weight": 1})
        assert two["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    else:
        assert "nvidia.com/gpu" not in json.dumps(container["resources"])
        assert "tolerations" not in spec and "affinity" not in spec


def test_platform_manifests_parse_and_keep_secrets_out():
    text = (K8S / "platform.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("StatefulSet", "postgres"), ("Deployment", "prefect-server"), ("StatefulSet", "seaweedfs")} <= kinds
    assert {("Deployment", "prefect-worker-cpu"), ("Deployment", "prefect-worker-gpu")} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] == "Service":
            assert d["spec"]["type"] == "ClusterIP", d["metadata"]["name"]  # nothing exposed by default
    # credentials only by reference to Secrets the README says how to create
    for env in re.findall(r"name: (\w*(?:PASSWORD|SECRET|KEY)\w*)\n\s*(value:.*)?", text):
        assert not env[1], f"{env[0]} has a literal value"
    for secret in set(re.findall(r"(?:name|secretName): (frugalml-[\w-]+)", text)):
        assert secret in (ROOT / "infra" / "README.md").read_text(), secret
    worker_pools = {
        d["metadata"]["name"].rsplit("-", 1)[1] for d in docs if d["metadata"]["name"].startswith("prefect-worker-")
    }
    assert worker_pools == {p.stem.split("-")[1] for p in K8S.glob("pool-*.json")}

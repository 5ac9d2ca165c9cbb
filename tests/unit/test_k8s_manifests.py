"""infra/k8s is exactly what `doctag manifests k8s` makes from the VM layout, every object is valid
against the Kubernetes JSON schemas (kubernetes-validate, offline), the KEDA objects have the
shape of KEDA's CRDs, and the manifests say what the layout says: replicas, resources, probes,
anti-affinity, disruption budgets, and network policies that allow exactly the arrows."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.cli import k8s_manifests, vm_layout
from services.cli.main import main
from services.common.amqp import Topology

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "infra" / "k8s"
KUBERNETES_VERSION = "1.33"

# The parts of KEDA v2's CRDs (keda.sh_scaledobjects.yaml, keda.sh_triggerauthentications.yaml,
# openAPIV3Schema of v1alpha1) that these manifests use, written out here: the required fields,
# their types, and no fields the CRDs do not have.
_INT = {"type": "integer", "minimum": 0}
SCALED_OBJECT_SPEC = {
    "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
    "properties": {
        "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                           "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                          "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}}},
        "minReplicaCount": _INT, "maxReplicaCount": _INT, "idleReplicaCount": _INT,
        "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
        "advanced": {"type": "object"}, "fallback": {"type": "object"},
        "triggers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
            "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                           "useCachedMetrics": {"type": "boolean"}, "metricType": {"enum": ["AverageValue", "Value",
                                                                                            "Utilization"]},
                           "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                           "authenticationRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                 "properties": {"name": {"type": "string"},
                                                                "kind": {"enum": ["TriggerAuthentication",
                                                                                  "ClusterTriggerAuthentication"]}}}}}},
    },
}
TRIGGER_AUTHENTICATION_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {"secretTargetRef": {"type": "array", "items": {
        "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
        "properties": {"parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}}}}},
}
KEDA_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"type": "string"},
                   "metadata": {"type": "object", "required": ["name", "namespace"]}, "spec": {}},
}
# RabbitMQ scaler metadata (keda.sh/docs/2.x/scalers/rabbitmq-queue).
RABBITMQ_METADATA = {"protocol": {"amqp", "http", "auto"}, "mode": {"QueueLength", "MessageRate"}}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return out


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_committed_manifests_are_the_generators_output() -> None:
    assert k8s_manifests.stale(K8S_DIR) == [], "run `doctag manifests k8s --out infra/k8s`"


def test_check_names_a_hand_edited_and_a_stray_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k8s_manifests.write(tmp_path)
    assert main(["manifests", "k8s", "--out", str(tmp_path), "--check"]) == 0
    path = tmp_path / "40-upload.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("replicas: 2", "replicas: 3"), encoding="utf-8")
    (tmp_path / "99-extra.yaml").write_text("{}\n", encoding="utf-8")
    assert main(["manifests", "k8s", "--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "40-upload.yaml" in err and "99-extra.yaml" in err and "50-network-policies.yaml" not in err


def test_every_kubernetes_object_is_valid_against_the_schemas(docs: list[dict[str, Any]]) -> None:
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked > 40


def test_schema_validation_catches_a_wrong_field() -> None:
    bad = k8s_manifests.deployment(vm_layout.role("web"), vm_layout.UPLOAD, "1")
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo of `resources`
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_keda_objects_have_the_crd_shape_and_scale_the_workers_on_the_jobs_queue(docs: list[dict[str, Any]]) -> None:
    scaled = _kind(docs, "ScaledObject")
    auths = _kind(docs, "TriggerAuthentication")
    assert list(scaled) == ["tagging-worker"] and auths
    for obj in [*scaled.values(), *auths.values()]:
        jsonschema.validate(obj, KEDA_OBJECT)
    for auth in auths.values():
        jsonschema.validate(auth["spec"], TRIGGER_AUTHENTICATION_SPEC)
    spec = scaled["tagging-worker"]["spec"]
    jsonschema.validate(spec, SCALED_OBJECT_SPEC)
    assert spec["scaleTargetRef"]["name"] in _kind(docs, "Deployment")
    assert spec["minReplicaCount"] == vm_layout.role("tagging").count < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and trigger["authenticationRef"]["name"] in auths
    assert meta["queueName"] == Topology().jobs_queue == "doctag.tagging.jobs"  # what the workers consume
    for key, allowed in RABBITMQ_METADATA.items():
        assert meta[key] in allowed
    assert int(meta["value"]) > 0
    # The broker's address comes from a Secret, never from the manifest.
    assert [ref["parameter"] for a in auths.values() for ref in a["spec"]["secretTargetRef"]] == ["host"]


def test_the_keda_schema_refuses_a_misspelt_field() -> None:
    spec = k8s_manifests.autoscalers()[-1]["spec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**spec, "maxReplicas": 3}, SCALED_OBJECT_SPEC)


def test_deployments_follow_the_layout(docs: list[dict[str, Any]]) -> None:
    deployments = _kind(docs, "Deployment")
    budgets = _kind(docs, "PodDisruptionBudget")
    services = _kind(docs, "Service")
    expected = {s.name for r in vm_layout.ROLES for s in r.services}
    assert set(deployments) == expected == set(budgets)
    for role in vm_layout.ROLES:
        for svc in role.services:
            spec = deployments[svc.name]["spec"]
            assert spec["replicas"] == role.count
            pod = spec["template"]["spec"]
            (container,) = pod["containers"]
            assert container["command"] == ["python", "-m", svc.module]
            assert container["image"].endswith(f"/doctag-{role.name}:{k8s_manifests._version()}")
            assert container["resources"] == {
                "requests": {"cpu": f"{svc.cpu_request_milli}m", "memory": f"{svc.memory_request_mib}Mi"},
                "limits": {"cpu": str(role.vcpus), "memory": f"{svc.memory_max_mib}Mi"}}
            env = {e["name"]: e["value"] for e in container["env"]}
            assert {k: env[k] for k in vm_layout.port_settings(svc)} == vm_layout.port_settings(svc)
            for client, setting, server, _ in vm_layout.PEER_SETTINGS:
                if client == svc.name:
                    assert server in env[setting], setting
            ports = {p["containerPort"] for p in container["ports"]}
            assert ports == {p for p in (svc.http_port, svc.grpc_port, svc.status_port) if p}
            assert {p["port"] for p in services[svc.name]["spec"]["ports"]} == ports
            anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert anti == [{"labelSelector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
                             "topologyKey": "kubernetes.io/hostname"}]
            budget = budgets[svc.name]["spec"]
            assert budget.get("minAvailable", role.count - 1) == role.count - 1
            assert pod["securityContext"]["runAsNonRoot"] is True


def test_probes_reach_health_and_readiness_with_a_client_certificate(docs: list[dict[str, Any]]) -> None:
    for name, dep in _kind(docs, "Deployment").items():
        svc = vm_layout.service(name)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        ready, live = container["readinessProbe"], container["livenessProbe"]
        if svc.status_port is not None:
            assert ready["httpGet"] == {"path": "/readyz", "port": "status"}
            assert live["httpGet"] == {"path": "/healthz", "port": "status"}
            continue
        # mutual TLS: the kubelet cannot present a certificate, so the pod probes itself with its own
        assert ready["exec"]["command"][:5] == ["doctag", "probe", f"https://localhost:{svc.http_port}/readyz",
                                                "--role", name]
        assert live["exec"]["command"][2] == f"https://localhost:{svc.http_port}/healthz"
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300


def _allowed(docs: list[dict[str, Any]], kind: str) -> set[tuple[str, str]]:
    """(client, server) pairs that one direction of the policies admits, pod label to pod label."""
    pairs: set[tuple[str, str]] = set()
    for policy in _kind(docs, "NetworkPolicy").values():
        spec = policy["spec"]
        if kind not in spec["policyTypes"] or not spec["podSelector"]:
            continue
        pod = spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for rule in spec.get(kind.lower(), []):
            for peer in rule.get("to" if kind == "Egress" else "from", []):
                other = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                if other and "namespaceSelector" not in peer:
                    pairs.add((pod, other) if kind == "Egress" else (other, pod))
    return pairs


def test_network_policies_allow_exactly_the_arrows(docs: list[dict[str, Any]]) -> None:
    policies = _kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    arrows = set(vm_layout.ARROWS)
    assert _allowed(docs, "Egress") == arrows
    assert _allowed(docs, "Ingress") == arrows
    # Only DNS leaves a pod without naming its peer; from outside, only the gateway's proxy port and
    # the monitoring namespace's scrapes of the metrics ports come in.
    open_egress = [n for n, p in policies.items() if "Egress" in p["spec"]["policyTypes"]
                   and not p["spec"]["podSelector"] and n != "default-deny"]
    assert open_egress == ["dns-egress"]
    keda = policies["keda-to-rabbitmq"]["spec"]["ingress"]
    assert keda[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]
    public = policies["public-to-gateway"]["spec"]["ingress"]
    assert public == [{"ports": [{"protocol": "TCP", "port": vm_layout.GATEWAY.http_port}]}]
    # Each arrow opens only the server's own ports.
    upload = policies["tagging-worker-to-upload-ingress"]["spec"]["ingress"][0]["ports"]
    assert {p["port"] for p in upload} == {vm_layout.UPLOAD.http_port, vm_layout.UPLOAD.grpc_port}
    assert policies["upload-to-postgres-egress"]["spec"]["egress"][0]["ports"] == [
        {"protocol": "TCP", "port": vm_layout.POSTGRES_PORT}]


def test_web_role_scales_on_cpu_from_its_vm_count(docs: list[dict[str, Any]]) -> None:
    hpas = _kind(docs, "HorizontalPodAutoscaler")
    web = vm_layout.role("web")
    assert set(hpas) == {s.name for s in web.services}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] == web.count < hpa["spec"]["maxReplicas"]


def _secret_names(node: Any) -> set[str]:
    """Every Secret a volume, an env var or a KEDA TriggerAuthentication refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("secretName"), str):
            found.add(node["secretName"])
        for key in ("secretKeyRef",):
            if key in node:
                found.add(node[key]["name"])
        for ref in node.get("secretTargetRef", []):
            found.add(ref["name"])
        for value in node.values():
            found |= _secret_names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _secret_names(value)
    return found


def test_secrets_are_referenced_documented_and_never_shipped(docs: list[dict[str, Any]]) -> None:
    assert not _kind(docs, "Secret")
    referenced = _secret_names(docs)
    assert referenced >= {"doctag-tls-upload", "doctag-keys-gateway", "doctag-credentials-tagging-worker",
                          "doctag-postgres-admin", "doctag-keda-rabbitmq"}
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    for name in referenced:
        generic = re.sub(r"-(gateway|upload|search|web|model-serving|tagging-worker|training-worker)$", "-<service>",
                         name)
        assert name in readme or generic in readme, name


def test_gateway_reaches_the_services_by_their_cluster_names_over_https() -> None:
    config = yaml.safe_load(k8s_manifests.gateway_config())
    targets = {u["name"]: [t["target"] for t in u["targets"]] for u in config["upstreams"]}
    assert targets["upload-upstream"] == [f"upload:{vm_layout.UPLOAD.http_port}"]
    assert targets["model-serving-upstream"] == [f"model-serving:{vm_layout.MODEL_SERVING.http_port}"]
    assert {s["protocol"] for s in config["services"]} == {"https"}
    (limit,) = [p for p in config["plugins"] if p["name"] == "rate-limiting"]
    assert limit["config"]["redis"]["host"] == "redis"


def test_model_serving_and_the_training_worker_share_one_read_write_many_model_store(
        docs: list[dict[str, Any]]) -> None:
    """The training worker hands artifacts over in `<store>/.training/`, where model-serving registers
    them: both mount the same claim at the same path, and the claim can be mounted by several nodes."""
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims["doctag-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        claim_volumes = {v["name"] for v in pod["volumes"]
                         if v.get("persistentVolumeClaim", {}).get("claimName") == "doctag-models"}
        for container in pod["containers"]:
            for mount in container["volumeMounts"]:
                if mount["name"] in claim_volumes:
                    mounts[d["metadata"]["name"]] = (mount["mountPath"], mount.get("readOnly", False))
    assert mounts == {"model-serving": ("/var/lib/doctag/models", False),
                      "training-worker": ("/var/lib/doctag/models", False)}

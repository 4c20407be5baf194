"""The overlays as a cluster gets them: valid against the Kubernetes schemas, zero checkov failures,
and internally consistent (selectors, references, settings)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.settings import Settings
from tests.k8s.render import (
    OVERLAYS,
    ROOT,
    containers,
    kubectl,
    render_dir,
    rendered,
    rendered_text,
    tree,
    workloads,
)

K8S_VERSION = "1.35.0"  # a current release (kubernetes-validate bundles the schemas: it runs offline)
TOOLS = ROOT / ".venv-k8s" / "bin"  # `make k8s-tools`: checkov and kubernetes-validate, apart from the app's venv
BACKING = ("postgres", "mlflow", "qdrant", "redis")
MODEL_SERVICES = ("embedding", "captioning", "vqa", "grounding")


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.skip(f"{path} is missing: `make k8s-tools` installs it")
    return str(path)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions, or a plain map) against a label set."""
    plain = {k: v for k, v in selector.items() if k not in ("matchLabels", "matchExpressions")}
    wanted = {**plain, **selector.get("matchLabels", {})}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def pod_labels(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads(objects)]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    kubectl()
    return request.param


def test_objects_are_valid_kubernetes(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    out = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(rendered(overlay)) > 30


def test_checkov_finds_nothing(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text(overlay))
    out = subprocess.run(
        [tool("checkov"), "--framework", "kubernetes", "--skip-download", "-f", str(manifest), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    report = json.loads(out.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], f"checkov failed checks: {failed}"
    assert report["summary"]["passed"] > 500
    for skipped in results["skipped_checks"]:  # each skip is in the manifest, with its reason
        assert skipped["check_id"] == "CKV_K8S_43", skipped
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped


def test_selectors_match_what_they_select(overlay: str) -> None:
    objects = rendered(overlay)
    pods = pod_labels(objects)
    for w in workloads(objects):
        assert matches(w["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]), w["metadata"]["name"]
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in by_kind(objects, kind).items():
            selector = obj["spec"]["selector"]
            assert any(matches(selector, labels) for labels in pods), f"{kind} {name} selects no pod"
    deployments = by_kind(objects, "Deployment")
    for name, hpa in by_kind(objects, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, name
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for name, policy in by_kind(objects, "NetworkPolicy").items():
        if policy["spec"]["podSelector"]:
            assert any(matches(policy["spec"]["podSelector"], labels) for labels in pods), f"policy {name}: no pod"
        peers = [p for rule in policy["spec"].get("ingress", []) for p in rule.get("from", [])]
        peers += [p for rule in policy["spec"].get("egress", []) for p in rule.get("to", [])]
        for peer in peers:
            if set(peer) == {"podSelector"}:  # a pod of this namespace: it must exist
                assert any(matches(peer["podSelector"], labels) for labels in pods), f"policy {name}: {peer}"


def test_every_pod_is_covered_by_default_deny(overlay: str) -> None:
    policies = by_kind(rendered(overlay), "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def _referenced(objects: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) of every ConfigMap, Secret and PVC a workload refers to."""
    refs: list[tuple[str, str, str | None]] = []
    for w in workloads(objects):
        spec = w["spec"]["template"]["spec"]
        for c in containers(w):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    refs.append(("ConfigMap", src["configMapRef"]["name"], None))
                if "secretRef" in src:
                    refs.append(("Secret", src["secretRef"]["name"], None))
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if field in ref:
                        refs.append((kind, ref[field]["name"], ref[field]["key"]))
        for vol in spec.get("volumes", []):
            sources = [vol] + vol.get("projected", {}).get("sources", [])
            for src in sources:
                if "secret" in src:
                    name = src["secret"].get("secretName") or src["secret"]["name"]
                    keys = [i["key"] for i in src["secret"].get("items", [])] or [None]
                    refs += [("Secret", name, k) for k in keys]
                if "configMap" in src:
                    refs.append(("ConfigMap", src["configMap"]["name"], None))
            if "persistentVolumeClaim" in vol:
                refs.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"], None))
    return refs


def test_every_reference_exists(overlay: str) -> None:
    objects = rendered(overlay)
    refs = _referenced(objects)
    assert {kind for kind, _, _ in refs} == {"ConfigMap", "Secret", "PersistentVolumeClaim"}
    for kind, name, key in refs:
        found = by_kind(objects, kind).get(name)
        assert found is not None, f"{kind} {name} is referenced and missing"
        if key is not None:
            assert key in found.get("data", {}), f"{kind} {name} has no key {key}"
    services = by_kind(objects, "Service")
    for sts in by_kind(objects, "StatefulSet").values():
        assert sts["spec"]["serviceName"] in services
    # every in-cluster address in the settings is a Service with that port
    for key, value in by_kind(objects, "ConfigMap")["vlmops-settings"]["data"].items():
        for host, port in re.findall(r"//([a-z0-9-]+)\.vlmops\.svc\.cluster\.local:?(\d*)", value):
            assert host in services, f"{key} names the Service {host}, which {overlay} does not have"
            ports = {p["port"] for p in services[host]["spec"]["ports"]}
            assert int(port or 80) in ports, f"{key}: {host} has no port {port or 80}"


def _is_setting(name: str) -> bool:
    parts = name.removeprefix("VLMOPS_").lower().split("__")
    model: Any = Settings
    for part in parts:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return True


def test_every_setting_is_a_real_setting(overlay: str) -> None:
    objects = rendered(overlay)
    data = by_kind(objects, "ConfigMap")["vlmops-settings"]["data"]
    assert len(data) > 15
    unknown = [k for k in data if not (k.startswith("VLMOPS_") and (_is_setting(k) or k == "VLMOPS_SECRETS_DIR"))]
    assert unknown == [], f"not settings of infra/settings.py: {unknown}"
    # the secret files mounted at VLMOPS_SECRETS_DIR are settings too, named like their variables
    for w in workloads(objects):
        for vol in w["spec"]["template"]["spec"].get("volumes", []):
            if vol["name"] != "secrets":
                continue
            for src in vol["projected"]["sources"]:
                secret = by_kind(objects, "Secret")[src["secret"]["name"]]
                items = src["secret"].get("items") or [{"path": k} for k in secret["data"]]
                assert all(_is_setting(i["path"]) for i in items), (w["metadata"]["name"], items)
    assert not _is_setting("VLMOPS_NO_SUCH_THING") and not _is_setting("VLMOPS_AUTH__NOPE")


def test_workloads_are_hardened_and_probed(overlay: str) -> None:
    for w in workloads(rendered(overlay)):
        name, pod = w["metadata"]["name"], w["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
        for c in containers(w):
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"], name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert {"livenessProbe", "readinessProbe"} <= set(c), f"{name} has no probes"
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), image
            assert not any("VLMOPS_" in e.get("name", "") and "valueFrom" in e for e in c.get("env", [])), (
                f"{name}: secrets are files under VLMOPS_SECRETS_DIR, not variables"
            )
        mounts = {m["mountPath"] for c in containers(w) for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: nothing writable at /tmp on a read-only root"


def _gpus(objects: list[dict[str, Any]]) -> set[str]:
    return {
        w["metadata"]["name"]
        for w in workloads(objects)
        if any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers(w))
    }


def test_gpu_pools_only_in_prod() -> None:
    kubectl()
    assert _gpus(rendered("cpu-dev")) == set()
    prod = rendered("gpu-prod")
    assert _gpus(prod) == {*MODEL_SERVICES, "trainer"}
    for w in workloads(prod):
        if w["metadata"]["name"] in _gpus(prod):
            assert w["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert w["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/vlmops/vlmops-gpu:")
    assert {w["spec"]["template"]["spec"]["containers"][0]["image"] for w in workloads(rendered("cpu-dev"))} >= {
        "ghcr.io/vlmops/vlmops-cpu:0.1.0"
    }


def test_backing_services_are_bundled_and_can_be_switched_off() -> None:
    kubectl()
    prod, managed = rendered("gpu-prod"), rendered("managed")
    names = {w["metadata"]["name"] for w in workloads(prod)}
    assert set(BACKING) <= names
    assert {
        k: v["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] for k, v in by_kind(prod, "StatefulSet").items()
    }
    left = {o["metadata"]["name"] for o in managed if o["metadata"]["name"] in BACKING}
    assert left == set(), f"still bundled in managed: {left}"
    assert "mlflow-artifacts" not in by_kind(managed, "PersistentVolumeClaim")
    egress = by_kind(managed, "NetworkPolicy")
    assert {f"to-managed-{b}" for b in BACKING} <= set(egress)
    data = by_kind(managed, "ConfigMap")["vlmops-settings"]["data"]
    assert data["VLMOPS_MLFLOW_TRACKING_URI"].startswith("https://")


def test_servicemonitor_component_selects_the_services() -> None:
    overlay = tree() / "overlays" / "monitored"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(
        "resources: [../../base]\ncomponents: [../../components/servicemonitor]\n"
    )
    objects = [o for o in yaml.safe_load_all(render_dir(overlay)) if o]
    monitor = by_kind(objects, "ServiceMonitor")["vlmops-services"]
    selected = {
        n
        for n, s in by_kind(objects, "Service").items()
        if matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    }
    assert selected == {*MODEL_SERVICES, "search"}
    assert all(any(p["name"] == "http" for p in by_kind(objects, "Service")[n]["spec"]["ports"]) for n in selected)
    pods = by_kind(objects, "PodMonitor")["vlmops-workers"]
    scraped = {
        w["metadata"]["name"]
        for w in workloads(objects)
        if matches(pods["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
    }
    assert scraped == {"worker", "trainer"}
    assert all(
        any(p.get("name") == "metrics" for p in containers(w)[0]["ports"])
        for w in workloads(objects)
        if w["metadata"]["name"] in scraped
    )

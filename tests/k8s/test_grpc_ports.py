"""The gRPC ports in every overlay: each service's `grpc` Service port targets a containerPort equal to its
VLMOPS_<SVC>__GRPC_PORT, and the NetworkPolicies admit gRPC wherever they admit HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from infra.settings import Settings
from tests.k8s.render import OVERLAYS, containers, kubectl, rendered, workloads
from tests.k8s.test_manifests import MODEL_SERVICES, _is_setting, by_kind, matches


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    kubectl()
    return str(request.param)


GRPC_SERVICES = (*MODEL_SERVICES, "search")


def _grpc_default(service: str) -> int:
    """The default of VLMOPS_<SVC>__GRPC_PORT in infra/settings.py."""
    return Settings.model_fields[service].annotation.model_fields["grpc_port"].default


def _selected(objects: list[dict[str, Any]], selector: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in workloads(objects) if matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]


def _container_ports(workload: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", []) if "name" in p}


def test_services_expose_their_grpc_port(overlay: str) -> None:
    objects = rendered(overlay)
    services = by_kind(objects, "Service")
    for name in GRPC_SERVICES:
        ports = {p["name"]: p for p in services[name]["spec"]["ports"]}
        assert ports["http"].get("appProtocol") == "http", name
        grpc = ports.get("grpc")
        assert grpc is not None, f"Service {name} has no port grpc"
        assert grpc["appProtocol"] == "grpc" and grpc.get("protocol", "TCP") == "TCP", grpc
        assert grpc["targetPort"] == "grpc", f"Service {name}: the grpc port targets the containerPort by name"
        pods = _selected(objects, services[name]["spec"]["selector"])
        assert [w["metadata"]["name"] for w in pods] == [name]
        for w in pods:
            (container,) = w["spec"]["template"]["spec"]["containers"]
            declared = {p["name"]: p for p in container["ports"]}
            assert "grpc" in declared, f"{name}: no containerPort grpc"
            assert declared["grpc"].get("protocol", "TCP") == "TCP"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            key = f"VLMOPS_{name.upper()}__GRPC_PORT"
            assert _is_setting(key), key
            assert key in env, f"{name}: {key} is not set in the container"
            assert int(env[key]) == declared["grpc"]["containerPort"] == grpc["port"] == _grpc_default(name), (
                name,
                env[key],
                declared["grpc"],
                grpc,
            )
            # probes stay on HTTP
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert container[probe]["httpGet"]["port"] == "http", (name, probe)
    # the Celery workers serve no gRPC
    for w in workloads(objects):
        if w["metadata"]["name"] in ("worker", "trainer"):
            assert "grpc" not in _container_ports(w)
            assert not any(e["name"].endswith("__GRPC_PORT") for c in containers(w) for e in c.get("env", []))


def _admits(rule: dict[str, Any], port: int, name: str) -> bool:
    """Whether a NetworkPolicy rule's ports admit TCP to a pod's port (its number, or its name)."""
    entries = rule.get("ports")
    if not entries:
        return True
    for entry in entries:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None or wanted == name:
            return True
        if isinstance(wanted, int) and wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def test_networkpolicies_admit_grpc_wherever_they_admit_http(overlay: str) -> None:
    objects = rendered(overlay)
    policies = by_kind(objects, "NetworkPolicy")
    workload = {w["metadata"]["name"]: w for w in workloads(objects)}
    labels_of = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workload.items()}
    for name in GRPC_SERVICES:
        labels = labels_of[name]
        ports = _container_ports(workload[name])
        http, grpc = ports["http"], ports["grpc"]
        # ingress to these pods: every rule that admits HTTP admits gRPC from the same peers
        admitted = 0
        for pname, policy in policies.items():
            if not matches(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                if _admits(rule, http, "http"):
                    assert _admits(rule, grpc, "grpc"), f"policy {pname} admits {name} on HTTP, not on gRPC {grpc}"
                    admitted += 1
        assert admitted, f"{overlay}: no ingress to {name} on HTTP and gRPC"
        # callers' egress to these pods: every rule that allows HTTP allows gRPC
        callers: set[str] = set()
        for pname, policy in policies.items():
            for rule in policy["spec"].get("egress", []):
                peers = [p for p in rule.get("to", []) if set(p) == {"podSelector"}]
                if not any(matches(p["podSelector"], labels) for p in peers) or not _admits(rule, http, "http"):
                    continue
                assert _admits(rule, grpc, "grpc"), f"policy {pname}: egress to {name} on HTTP, not on gRPC {grpc}"
                callers |= {n for n, pod in labels_of.items() if matches(policy["spec"]["podSelector"], pod)}
        assert "worker" in callers, f"{overlay}: the workers may not call {name}"
        if name == "embedding":
            assert "search" in callers, f"{overlay}: search may not call embedding"

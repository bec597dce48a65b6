"""The Kubernetes manifests (deploy/k8s), validated offline: every core resource against the pinned Kubernetes
version's schema (kubernetes-validate, strict), and each one against the service it deploys: probe paths are its
routes, env names its settings, the shutdown budget covers its drain, the autoscaling metric one it exports."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.metrics import Metrics
from service.routes import router
from service.settings import Settings
from training.paths import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.34.0"
CUSTOM_KINDS = {"ServiceMonitor"}  # a Prometheus-operator CRD: no schema in core Kubernetes, checked by hand below


def resources() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((K8S / name).read_text()) for name in kustomization["resources"]]
    return {doc["kind"]: doc for doc in docs}


def container() -> dict[str, Any]:
    return resources()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


@pytest.mark.parametrize("kind", sorted(set(resources()) - CUSTOM_KINDS))
def test_manifest_is_valid_for_the_pinned_kubernetes(kind: str) -> None:
    kubernetes_validate.validate(resources()[kind], KUBERNETES_VERSION, strict=True)


def test_every_manifest_file_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_probes_use_the_service_health_routes_and_grpc_health_on_their_ports() -> None:
    c = container()
    routes = {route.path for route in router.routes}  # type: ignore[attr-defined]
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe")} <= routes
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(env()["RANK_PORT"]) == ports["http"]
    # Readiness asks the gRPC health service (the whole server's status: no `service` named), on the gRPC port.
    assert c["readinessProbe"]["grpc"] == {"port": ports["grpc"]} and int(env()["RANK_GRPC_PORT"]) == ports["grpc"]
    targets = {p["name"]: p["targetPort"] for p in resources()["Service"]["spec"]["ports"]}
    assert targets == {"http": "http", "grpc": "grpc"}


def test_env_names_are_service_settings() -> None:
    settings = {f"RANK_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env() if name.startswith("RANK_")} <= settings


def test_shutdown_budget_covers_pre_stop_drain_and_grace() -> None:
    spec = resources()["Deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + float(env()["RANK_DRAIN_SECONDS"]) + float(env()["RANK_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > needed


def test_selectors_agree() -> None:
    r = resources()
    pod_labels = r["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = r["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert r["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    monitor = r["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= r["Service"]["metadata"]["labels"].items()
    service_ports = {p["name"] for p in r["Service"]["spec"]["ports"]}
    assert all(e["port"] in service_ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert r["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == r["Deployment"]["metadata"]["name"]


def test_autoscaling_metric_is_exported_and_served_by_the_adapter_rule() -> None:
    r = resources()
    (metric,) = r["HorizontalPodAutoscaler"]["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = {family.name for family in Metrics().registry.collect()}
    assert name in exported
    rules = yaml.safe_load(r["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert any(rule["seriesQuery"].startswith(f"{name}{{") and rule["name"]["as"] == name for rule in rules)

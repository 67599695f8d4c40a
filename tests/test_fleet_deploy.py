"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (bundled with
kubernetes-validate: nothing is downloaded), and the compose file, Dockerfile and coturn config hang
together with what the code reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parley.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes still commonly run, and the newest the validator knows.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
def test_kubernetes_manifests_are_valid(version: str) -> None:
    docs = manifests()
    assert len(docs) >= 10
    for filename, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{filename}: {doc['kind']} {doc['metadata']['name']}"
            raise AssertionError(f"{where}: {exc.message}") from None


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_worker_deployment_drains_probes_and_scales() -> None:
    config = find("ConfigMap", "parley-config")["data"]
    worker = find("Deployment", "parley-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "worker"
    # the grace period covers the drain
    assert pod["terminationGracePeriodSeconds"] > float(config["PARLEY_DRAIN_TIMEOUT"])
    assert "TERM" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    health_port = container["ports"][0]["containerPort"]
    assert str(health_port) in container["args"]
    assert {"PARLEY_WORKER_ID", "PARLEY_ICE_HOST_ADDRESSES", "PARLEY_TURN_SECRET"} <= env_names(container)
    assert pod["securityContext"]["runAsNonRoot"] is True

    labels = worker["spec"]["selector"]["matchLabels"]
    assert find("PodDisruptionBudget", "parley-worker")["spec"]["selector"]["matchLabels"] == labels
    hpa = find("HorizontalPodAutoscaler", "parley-worker")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "parley-worker"}
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "parley_worker_load"

    signaling = find("Deployment", "parley-signaling")
    service = find("Service", "parley-signaling")
    assert service["spec"]["selector"] == signaling["spec"]["selector"]["matchLabels"]
    assert signaling["spec"]["template"]["spec"]["containers"][0]["args"][0] == "signaling"
    assert find("Service", "redis")["spec"]["ports"][0]["port"] == 6379
    assert config["PARLEY_REDIS_URL"].startswith("redis://redis:6379")


def test_every_parley_variable_in_deploy_is_a_real_setting() -> None:
    """A typo in a variable name would be silently ignored: each PARLEY_* used is one Settings reads."""
    import inspect

    known = set(re.findall(r'"(PARLEY_[A-Z_]+)"', inspect.getsource(Settings)))
    used = set()
    for path in [*K8S.glob("*.yaml"), DEPLOY / "docker-compose.yml", DEPLOY / "Dockerfile"]:
        used |= set(re.findall(r"\b(PARLEY_[A-Z_]+)\b", path.read_text()))
    used -= {"PARLEY_PUBLIC_IP"}  # the compose file's own input, not a Parley setting
    assert used and used <= known, used - known


def test_compose_runs_redis_coturn_signaling_and_two_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "coturn", "signaling", "worker-1", "worker-2"}
    assert services["redis"]["image"].startswith("redis:")
    assert services["coturn"]["image"].startswith("coturn/coturn")
    secret_flag = "--static-auth-secret=${PARLEY_TURN_SECRET:?set PARLEY_TURN_SECRET}"
    assert secret_flag in services["coturn"]["command"]
    assert services["signaling"]["command"][0] == "signaling"
    for name in ("signaling", "worker-1", "worker-2"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["environment"]["PARLEY_REDIS_URL"].startswith("redis://")
        assert "PARLEY_TURN_SECRET" in service["environment"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in service
    for name in ("worker-1", "worker-2"):
        service = services[name]
        assert service["command"][0] == "worker"
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > int(service["environment"]["PARLEY_DRAIN_TIMEOUT"])
    commands = [services[n]["command"] for n in ("worker-1", "worker-2")]
    ports = {command[command.index("--health-port") + 1] for command in commands}
    assert len(ports) == 2  # host networking: one health port each


def test_dockerfile_is_slim_non_root_with_libopus() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.M)
    assert "libopus0" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert 'ENTRYPOINT ["tini", "--", "parley"]' in dockerfile
    assert "COPY parley " in dockerfile
    assert "COPY web" not in dockerfile  # the page and widget come inside the wheel


def test_coturn_uses_the_shared_secret_scheme_without_the_secret() -> None:
    for text in [
        (DEPLOY / "coturn/turnserver.conf").read_text(),
        find("ConfigMap", "coturn")["data"]["turnserver.conf"],
    ]:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        assert "use-auth-secret" in lines
        assert not any(line.startswith("static-auth-secret") for line in lines)
        assert "denied-peer-ip=169.254.0.0-169.254.255.255" in lines  # never the cloud metadata service

"""deploy/kubernetes: each overlay renders, validates against a Kubernetes release's schemas, and agrees with the
server's settings. That the probes, port and user agree with the image itself is checked in test_container.py."""

from __future__ import annotations

import kubernetes_validate
import pytest
from conftest import rendered_manifests

from embedding_server.settings import Settings

KUBERNETES_RELEASE = "1.34.0"
OVERLAYS = ("cpu", "gpu")
KINDS = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def server_container(manifests: dict) -> dict:
    [container] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_against_the_release(overlay):
    manifests = rendered_manifests(overlay)
    assert set(manifests) == KINDS
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, KUBERNETES_RELEASE, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_servers_and_the_grace_period_outlasts_a_request(overlay):
    manifests = rendered_manifests(overlay)
    config = manifests["ConfigMap"]["data"]
    unknown = {name for name in config if name.lower() not in Settings.model_fields}
    assert not unknown, f"not settings of the server: {unknown}"
    settings = Settings(**{name.lower(): value for name, value in config.items()})
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.request_timeout_s + settings.shutdown_delay_s
    # The drain is longer than two readiness periods, so that the endpoints drop the pod before it stops listening.
    assert settings.shutdown_delay_s >= 2 * server_container(manifests)["readinessProbe"]["periodSeconds"]
    container = server_container(manifests)
    assert container["envFrom"] == [{"configMapRef": {"name": manifests["ConfigMap"]["metadata"]["name"]}}]
    [api_key] = container["env"]
    assert api_key["name"] == "API_KEY" and api_key["valueFrom"]["secretKeyRef"]["key"] == "API_KEY"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_port_and_selectors_line_up(overlay):
    manifests = rendered_manifests(overlay)
    container = server_container(manifests)
    [port] = container["ports"]
    assert port == {"name": "http", "containerPort": 3000}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        manifests["Service"]["spec"]["selector"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        manifests["Deployment"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "embedding-server"
    security = manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1034


def test_the_cpu_overlay_runs_the_cpu_image_with_threads_for_its_cores():
    manifests = rendered_manifests("cpu")
    container = server_container(manifests)
    assert container["image"] == "embedding-server:cpu"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert manifests["ConfigMap"]["data"]["MODEL_THREADS"] == container["resources"]["requests"]["cpu"]


def test_the_gpu_overlay_asks_for_one_gpu():
    manifests = rendered_manifests("gpu")
    container = server_container(manifests)
    assert container["image"] == "embedding-server:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert manifests["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1

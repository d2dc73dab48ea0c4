"""The chart's ``web`` component, rendered by Helm's engine and validated like the rest."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import lint

from opsq.core.settings import load_settings
from tests.deploy.chart import CHART_DIR, find, render_chart

KUBE_VERSION = "1.30.0"
INGRESS = {
    "web": {
        "auth": {"password": "correct-horse-battery"},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "status.example.com",
            "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "true"},
            "tls": [{"secretName": "status-tls", "hosts": ["status.example.com"]}],
        },
    }
}


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "opsq-web")[0]
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "values", [{}, INGRESS, {"web": {"public": True}}], ids=["default", "ingress", "public"]
)
def test_web_objects_are_valid_and_lint_clean(values: dict[str, Any]) -> None:
    """Deployment, Service, Secret (and Ingress) validate strictly against Kubernetes'
    schemas and `helm lint --strict` finds nothing."""
    objects = render_chart(values)
    web = [o for o in objects if o["metadata"]["name"].startswith("opsq-web")]
    assert {o["kind"] for o in web} >= {"Deployment", "Service", "ServiceAccount"}
    for obj in web:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    report = lint(CHART_DIR, values, strict=True, kube_version="v" + KUBE_VERSION)
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_web_runs_opsq_web_with_probes_and_a_secret_password() -> None:
    """`opsq web` on the pod IP, /healthz and /readyz probes on its port, the password
    from a generated Secret by reference; every OPSQ_* it sets is a real setting."""
    objects = render_chart()
    container = _container(objects)
    assert container["command"] == ["opsq", "web"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8080
    env = {e["name"]: e for e in container["env"]}
    assert env["OPSQ_WEB__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "opsq-web",
        "key": "password",
    }
    secret = find(objects, "Secret", "opsq-web")[0]["stringData"]
    assert len(secret["password"]) == 24
    service = find(objects, "Service", "opsq-web")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not find(objects, "Ingress")
    with pytest.MonkeyPatch.context() as patch:
        for name, entry in env.items():
            if name.startswith("OPSQ_WEB__") and "value" in entry:
                patch.setenv(name, entry["value"])
        assert load_settings(None).web.bind == "0.0.0.0"


def test_configured_password_stays_out_of_the_pod_and_ingress_is_optional() -> None:
    """A password from values is only in the Secret; the Ingress routes the host to the
    Service with TLS."""
    objects = render_chart(INGRESS)
    deployment = find(objects, "Deployment", "opsq-web")[0]
    assert "correct-horse-battery" not in yaml.safe_dump(deployment)
    assert find(objects, "Secret", "opsq-web")[0]["stringData"]["password"] == (
        "correct-horse-battery"
    )
    (ingress,) = find(objects, "Ingress")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "status.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "opsq-web",
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"][0]["secretName"] == "status-tls"


def test_public_mode_has_no_password_and_says_public() -> None:
    """web.public: no Secret, OPSQ_WEB__PUBLIC=true, no password variable."""
    objects = render_chart({"web": {"public": True}})
    env = {e["name"]: e.get("value") for e in _container(objects)["env"]}
    assert env["OPSQ_WEB__PUBLIC"] == "true"
    assert "OPSQ_WEB__PASSWORD" not in env
    assert not find(objects, "Secret", "opsq-web")

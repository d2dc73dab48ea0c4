"""The Helm chart, rendered by Helm's real engine and checked against Kubernetes' schemas.

Each test names the deployment property it proves: objects valid for the API server,
least-privilege RBAC for the watcher, hardened pods, Flower credentials kept out of argv,
grace periods long enough for each component's shutdown, and a values schema that
rejects mistakes before anything reaches a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, lint
from helm_python.errors import HelmError

from opsq.core import signatures
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.settings import Settings, load_settings
from opsq.engines.cleanup.rbac import policy_rules
from tests.deploy.chart import CHART_DIR, find, render_chart, watcher_role_rules

KUBE_VERSION = "1.30.0"

FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example/opsq", "tag": "1.2.3"},
    "redis": {"url": "redis://:s3cret@redis.example:6379/0"},
    "config": {"probes": {"batch_size": 50}},
    "cleanup": {
        "rules": [
            {"resource": "v1/pods"},
            {"resource": "batch/v1/jobs"},
            {"resource": "v1/pods"},
            {"resource": "apps/v1/replicasets"},
        ],
        "events": True,
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "worker": {"replicas": 3, "queues": "probes", "autoscaling": {"enabled": True}},
    "beat": {"replicas": 2, "pdb": {"enabled": True, "maxUnavailable": 1}},
    "flower": {"auth": {"user": "admin", "password": "correct-horse"}},
    "shipper": {"enabled": True},
    "agent": {"enabled": True, "hostLogDirs": ["/var/log/pods", "/var/log/app"],
              "supplementalGroups": [4]},
    "watcher": {"clusterWide": False},
}  # fmt: skip

CRD_KINDS = {"ServiceMonitor"}


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
    ]


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render_chart()


@pytest.fixture(scope="module")
def full_objects() -> list[dict[str, Any]]:
    return render_chart(FULL_VALUES)


@pytest.mark.parametrize("which", ["default", "full"])
def test_every_rendered_object_is_valid_for_the_kubernetes_api(
    which: str, default_objects: list[dict[str, Any]], full_objects: list[dict[str, Any]]
) -> None:
    """Every object validates (strict: no unknown fields) against Kubernetes' OpenAPI schemas."""
    objects = default_objects if which == "default" else full_objects
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # no schema offline for CRDs; checked structurally below
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked == len([o for o in objects if o["kind"] not in CRD_KINDS]) > 5


def test_the_full_value_set_renders_every_component(full_objects: list[dict[str, Any]]) -> None:
    """Non-default values switch on agent, shipper, watcher, HPA, ServiceMonitor and PDBs."""
    names = {(o["kind"], o["metadata"]["name"]) for o in full_objects}
    for expected in [
        ("Deployment", "opsq-worker"), ("Deployment", "opsq-beat"),
        ("Deployment", "opsq-flower"), ("Deployment", "opsq-shipper"),
        ("Deployment", "opsq-watcher"), ("DaemonSet", "opsq-agent"),
        ("HorizontalPodAutoscaler", "opsq-worker"), ("ServiceMonitor", "opsq"),
        ("PodDisruptionBudget", "opsq-beat"), ("Role", "opsq-watcher"),
        ("RoleBinding", "opsq-watcher"), ("Service", "opsq-worker-metrics"),
        ("Deployment", "opsq-cleanup-worker"), ("RoleBinding", "opsq-cleanup-worker"),
    ]:  # fmt: skip
        assert expected in names
    worker = find(full_objects, "Deployment", "opsq-worker")[0]
    assert "replicas" not in worker["spec"], "the HPA owns the replica count"
    monitor = find(full_objects, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_default_values_enable_only_the_core_components(
    default_objects: list[dict[str, Any]],
) -> None:
    """By default: worker, beat, flower, web; no watcher without rules, no agent/shipper."""
    deployments = {o["metadata"]["name"] for o in find(default_objects, "Deployment")}
    assert deployments == {"opsq-worker", "opsq-beat", "opsq-flower", "opsq-web"}
    assert not find(default_objects, "DaemonSet")
    assert not [o for o in default_objects if o["kind"] in ("Role", "ClusterRole")]


@pytest.mark.parametrize("values", [{}, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_reports_no_errors_or_warnings(values: dict[str, Any]) -> None:
    """`helm lint --strict` (Helm's own linter, schema included) finds nothing."""
    report = lint(CHART_DIR, values, strict=True, kube_version="v" + KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, report
    assert not report["errors"], report


def test_watcher_rules_are_one_per_group_and_resource_with_only_the_needed_verbs() -> None:
    """Duplicated resources collapse; core group is ""; events create only when asked;
    the owners the owner guard looks up get "get" only."""
    rules = watcher_role_rules(FULL_VALUES)
    verbs = ["get", "list", "watch", "delete"]
    owners = [("apps", "statefulsets"), ("apps", "daemonsets"), ("", "replicationcontrollers"),
              ("batch", "cronjobs"), ("apps", "deployments")]  # fmt: skip
    assert rules == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": verbs},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": verbs},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": verbs},
        *({"apiGroups": [g], "resources": [r], "verbs": ["get"]} for g, r in owners),
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    quiet = watcher_role_rules(
        {"cleanup": {"rules": [{"resource": "v1/pods", "delete_if_owner_exists": True}]}}
    )
    assert quiet == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": verbs},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
    ]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]


def test_watcher_is_cluster_wide_by_default_and_bound_to_its_own_account() -> None:
    """ClusterRole + ClusterRoleBinding to the watcher's ServiceAccount, nobody else's."""
    objects = render_chart({"cleanup": {"rules": [{"resource": "v1/configmaps"}]}})
    binding = find(objects, "ClusterRoleBinding", "opsq-watcher")[0]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "opsq-watcher",
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "opsq-watcher", "namespace": "opsq"}
    ]
    watcher = find(objects, "Deployment", "opsq-watcher")[0]["spec"]["template"]["spec"]
    assert watcher["serviceAccountName"] == "opsq-watcher"
    assert watcher["automountServiceAccountToken"] is True


def test_only_cleanup_workers_share_the_watchers_role_and_probe_workers_get_none() -> None:
    """Deletions run in cleanup-worker pods bound to the watcher's role; probe workers
    consume every other queue (probes, alerts) and hold no Kubernetes credentials."""
    objects = render_chart({"cleanup": {"rules": [{"resource": "v1/pods"}]}})
    bindings = find(objects, "ClusterRoleBinding")
    assert {b["metadata"]["name"] for b in bindings} == {"opsq-watcher", "opsq-cleanup-worker"}
    assert {b["roleRef"]["name"] for b in bindings} == {"opsq-watcher"}
    subjects = [s["name"] for b in bindings for s in b["subjects"]]
    assert sorted(subjects) == ["opsq-cleanup-worker", "opsq-watcher"]
    assert len(find(objects, "ClusterRole")) == 1

    def command(name: str) -> list[str]:
        spec = find(objects, "Deployment", name)[0]["spec"]["template"]["spec"]
        return spec["containers"][0]["command"]  # type: ignore[no-any-return]

    assert command("opsq-worker")[-2:] == ["-Q", "probes,alerts"]
    assert command("opsq-cleanup-worker")[-2:] == ["-Q", "cleanup"]
    workers = ("opsq-worker", "opsq-cleanup-worker")
    consumed = {queue for name in workers for queue in command(name)[-1].split(",")}
    routed = {route["queue"] for route in signatures.ROUTES.values()}
    assert routed <= consumed, f"no worker pod consumes {sorted(routed - consumed)}"
    plain = find(render_chart(), "Deployment", "opsq-worker")[0]["spec"]["template"]["spec"]
    assert "-Q" not in plain["containers"][0]["command"], "without cleanup: every queue"


def test_a_malformed_cleanup_resource_fails_the_render() -> None:
    """'pods' (no version) is rejected by the schema instead of producing a useless Role."""
    with pytest.raises(HelmError, match="resource"):
        render_chart({"cleanup": {"rules": [{"resource": "pods"}]}})


def test_every_pod_is_hardened(full_objects: list[dict[str, Any]]) -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, own account."""
    pods = _pod_specs(full_objects)
    assert len(pods) == 8  # worker, beat, flower, web, shipper, watcher, cleanup-worker, agent
    for name, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["serviceAccountName"] == name
        # The agent reads pod metadata (get/list/watch pods; tests/k8slogs/test_chart_agent).
        needs_token = name in ("opsq-watcher", "opsq-cleanup-worker", "opsq-agent")
        assert spec["automountServiceAccountToken"] is needs_token, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"], name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/etc/opsq"} <= mounts, "writable scratch + config"


def test_long_running_components_probe_healthz_and_readyz(
    full_objects: list[dict[str, Any]],
) -> None:
    """Liveness is /healthz and readiness /readyz on the metrics port (Flower: /healthcheck)."""
    for name, spec in _pod_specs(full_objects):
        container = spec["containers"][0]
        live = container["livenessProbe"]["httpGet"]
        ready = container["readinessProbe"]["httpGet"]
        if name.endswith("-flower"):
            assert live["path"] == ready["path"] == "/healthcheck"
            continue
        assert (live["path"], ready["path"]) == ("/healthz", "/readyz"), name
        assert live["port"] == "metrics"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OPSQ_METRICS__BIND"] == "0.0.0.0", "probes reach the pod IP"


def test_grace_periods_cover_each_components_shutdown(
    default_objects: list[dict[str, Any]],
) -> None:
    """Worker grace exceeds the hard task time limit, so warm shutdown can finish a batch."""
    settings = load_settings()
    worker = find(default_objects, "Deployment", "opsq-worker")[0]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > settings.probes.time_limit
    agent = render_chart({"agent": {"enabled": True}})
    ds = find(agent, "DaemonSet")[0]["spec"]["template"]["spec"]
    assert ds["terminationGracePeriodSeconds"] > settings.logs.agent.shutdown_grace


def test_flower_credentials_come_from_a_secret_never_the_command_line(
    full_objects: list[dict[str, Any]],
) -> None:
    """FLOWER_BASIC_AUTH is a secretKeyRef; the password appears nowhere in the pod spec."""
    flower = find(full_objects, "Deployment", "opsq-flower")[0]
    container = flower["spec"]["template"]["spec"]["containers"][0]
    auth = next(e for e in container["env"] if e["name"] == "FLOWER_BASIC_AUTH")
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "opsq-flower", "key": "basic-auth"}
    assert "correct-horse" not in yaml.safe_dump(flower)
    secret = find(full_objects, "Secret", "opsq-flower")[0]
    assert secret["stringData"]["basic-auth"] == "admin:correct-horse"


def test_flower_password_is_generated_when_not_given(
    default_objects: list[dict[str, Any]],
) -> None:
    """An empty password yields a random 24-character one: Flower is never open."""
    secret = find(default_objects, "Secret", "opsq-flower")[0]["stringData"]
    assert len(secret["password"]) == 24
    assert secret["password"].isalnum()
    assert secret["basic-auth"] == f"opsq:{secret['password']}"


def test_redis_url_is_in_a_secret_and_referenced_by_every_component(
    full_objects: list[dict[str, Any]],
) -> None:
    """The URL (with its password) lives only in the Secret; pods get it by reference."""
    secret = find(full_objects, "Secret", "opsq-redis")[0]
    assert secret["stringData"]["url"] == "redis://:s3cret@redis.example:6379/0"
    for name, spec in _pod_specs(full_objects):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["OPSQ_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "opsq-redis", name
        assert "s3cret" not in yaml.safe_dump(spec), name


def test_agent_mounts_host_logs_read_only_and_checkpoints_on_the_host(
    full_objects: list[dict[str, Any]],
) -> None:
    """Every host log dir is read-only; checkpoints go to a hostPath that outlives the pod."""
    spec = find(full_objects, "DaemonSet", "opsq-agent")[0]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    for path in ("/var/log/pods", "/var/log/app"):
        assert mounts[path]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["checkpoints"]["hostPath"]["path"] == "/var/lib/opsq/agent"
    assert "readOnly" not in mounts["/var/lib/opsq-agent"]
    assert spec["securityContext"]["supplementalGroups"] == [4]


def test_config_map_holds_a_config_opsq_accepts(
    default_objects: list[dict[str, Any]], tmp_path: Any
) -> None:
    """The rendered config file loads through opsq's own settings validation."""
    cm = find(default_objects, "ConfigMap", "opsq-config")[0]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    settings = load_settings(path)
    assert isinstance(settings, Settings)
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    "values",
    [
        {"worker": {"replicaz": 2}},
        {"flower": {"auth": {"password": "a,b"}}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"worker": {"terminationGracePeriodSeconds": "soon"}},
    ],
    ids=["typo", "comma-in-password", "root", "grace-not-int"],
)
def test_values_schema_rejects_mistakes(values: dict[str, Any]) -> None:
    """values.schema.json stops typos and unsafe settings before rendering."""
    with pytest.raises(HelmError):
        Chart.load(CHART_DIR).validate_schema(values)


def test_secrets_use_string_data(default_objects: list[dict[str, Any]]) -> None:
    """Secrets use stringData, so the chart never double-encodes a password."""
    for secret in find(default_objects, "Secret"):
        assert "data" not in secret
        assert all(isinstance(v, str) for v in secret["stringData"].values())


CLEANUP = {
    "events": True,
    "rules": [
        {"name": "old-pods", "resource": "v1/pods", "when": {"older_than": "1h"}},
        {"name": "done-jobs", "resource": "batch/v1/jobs", "when": {"finished": True}},
        {"name": "old-jobs", "resource": "batch/v1/jobs", "when": {"older_than": "7d"}},
    ],
}


def test_watcher_role_equals_what_opsq_cleanup_rbac_prints() -> None:
    """The chart's Role and `opsq cleanup rbac` (policy_rules) agree for the same config."""
    settings = CleanupSettings.model_validate(CLEANUP)
    assert watcher_role_rules({"cleanup": CLEANUP}) == policy_rules(settings)


def test_config_map_with_cleanup_rules_is_accepted_by_opsq(tmp_path: Path) -> None:
    """values.cleanup becomes the config's cleanup section, valid for opsq's settings."""
    objects = render_chart({"cleanup": CLEANUP})
    path = tmp_path / "config.yaml"
    path.write_text(find(objects, "ConfigMap", "opsq-config")[0]["data"]["config.yaml"])
    settings = load_settings(path)
    assert [r.name for r in settings.cleanup.rules] == ["old-pods", "done-jobs", "old-jobs"]
    assert settings.cleanup.events is True


def test_every_opsq_environment_variable_the_chart_sets_is_a_real_setting(
    full_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt OPSQ_* variable would crash a pod at start (unknown fields are errors)."""
    names = set()
    for _name, spec in _pod_specs(full_objects):
        for entry in spec["containers"][0]["env"]:
            if entry["name"].startswith("OPSQ_") and "value" in entry:
                if entry["name"] in ("OPSQ_CONFIG",):
                    continue  # a path inside the pod
                monkeypatch.setenv(entry["name"], entry["value"])
                names.add(entry["name"])
        load_settings(None)  # raises ConfigError on an unknown or invalid variable
    assert {"OPSQ_METRICS__PORT", "OPSQ_CLEANUP__METRICS_PORT"} <= names

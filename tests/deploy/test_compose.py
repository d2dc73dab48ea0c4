"""docker-compose.yml against the Compose specification, and the Dockerfile's promises.

There is no Docker here, so the file is checked the way `docker compose config` starts:
against the Compose specification's JSON schema (vendored in tests/data/compose-spec.json,
taken from the docker-compose 1.29.2 wheel's compose/config/compose_spec.json so the test
needs no network), then for the properties opsq relies on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from opsq.core import keys, signatures
from opsq.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
OPSQ_SERVICES = (
    "worker",
    "beat",
    "flower",
    "web",
    "agent",
    "shipper",
    "watcher",
    "cleanup-worker",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    """Every key and type in docker-compose.yml is allowed by the Compose spec schema."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_schema_check_catches_a_wrong_key(compose: dict[str, Any]) -> None:
    """The schema is strict enough to reject a misspelt service key."""
    schema = json.loads(SCHEMA.read_text())
    broken = {**compose, "services": {**compose["services"], "worker": {"comand": ["x"]}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_images_come_from_variables_with_the_public_defaults(compose: dict[str, Any]) -> None:
    """OPSQ_IMAGE, OPSQ_BASE_IMAGE and OPSQ_REDIS_IMAGE pick the images (tests use local
    ones); unset, they are opsq:local on python:3.11-slim and valkey/valkey:8."""
    services = compose["services"]
    assert services["worker"]["image"] == "${OPSQ_IMAGE:-opsq:local}"
    assert services["worker"]["build"]["args"]["BASE"] == "${OPSQ_BASE_IMAGE:-python:3.11-slim}"
    assert services["redis"]["image"] == "${OPSQ_REDIS_IMAGE:-valkey/valkey:8}"


def test_writable_mounts_belong_to_the_container_user(compose: dict[str, Any]) -> None:
    """The data dir tmpfs is owned by the uid the containers run as (a bare tmpfs is
    root's, and every worker died with EACCES on its metrics dir)."""
    for name in OPSQ_SERVICES:
        svc = compose["services"][name]
        uid, gid = svc["user"].split(":")
        data = next(t for t in svc["tmpfs"] if t.split(":")[0] == "/var/lib/opsq")
        assert f"uid={uid}" in data.split(":")[1].split(","), name
        assert f"gid={gid}" in data.split(":")[1].split(","), name


def test_every_component_is_a_service(compose: dict[str, Any]) -> None:
    """redis plus every opsq component, all from the same image."""
    services = compose["services"]
    assert set(services) == {"redis", *OPSQ_SERVICES}
    assert len({services[name]["image"] for name in OPSQ_SERVICES}) == 1


def test_redis_keeps_work_aof_on_and_never_evicts(compose: dict[str, Any]) -> None:
    """appendonly yes and maxmemory-policy noeviction, with data on a named volume."""
    cmd = compose["services"]["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    """`--scale worker=N` works: no fixed container name, no host port to clash on."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert worker["command"][-2:] == ["-Q", "probes,alerts"], "no Kubernetes credentials needed"
    assert compose["services"]["cleanup-worker"]["command"][-2:] == ["-Q", "cleanup"]


def consumed_queues(command: list[str]) -> set[str]:
    """The queues a `celery worker` command line consumes (every queue without -Q)."""
    if "-Q" not in command:
        return set(keys.ALL_QUEUES)
    return set(command[command.index("-Q") + 1].split(","))


def test_every_routed_task_queue_has_a_compose_worker(compose: dict[str, Any]) -> None:
    """Each queue a task is routed to (notifications and the alerts tick included) is
    consumed by some worker service: a queue nobody consumes silently holds its tasks
    (the worker once took only `probes`, so no alert was ever delivered in compose)."""
    consumed: set[str] = set()
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:4] == ["celery", "-A", "tasks", "worker"]:
            consumed |= consumed_queues(command)
    routed = {route["queue"] for route in signatures.ROUTES.values()}
    assert keys.QUEUE_ALERTS in routed
    assert routed <= consumed, f"no compose worker consumes {sorted(routed - consumed)}"


def test_flower_requires_a_password_from_the_environment(compose: dict[str, Any]) -> None:
    """FLOWER_BASIC_AUTH is mandatory (${VAR:?}) and never part of the command line."""
    flower = compose["services"]["flower"]
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]
    assert not any("auth" in part for part in flower["command"])


def test_agent_reads_logs_read_only_and_keeps_checkpoints(compose: dict[str, Any]) -> None:
    """The host log dir is mounted :ro; checkpoints live on a named volume."""
    volumes = compose["services"]["agent"]["volumes"]
    logs = [v for v in volumes if isinstance(v, dict) and v["target"] == "/var/log/host"]
    assert logs
    assert logs[0]["read_only"] is True
    assert "agent-checkpoints:/var/lib/opsq-agent" in volumes


def test_host_paths_are_binds_that_never_create_a_missing_source(
    compose: dict[str, Any],
) -> None:
    """Every host file or directory is a long-syntax bind: with the short syntax a missing
    source (no ~/.kube/config under `--profile cleanup`) made dockerd create a root-owned
    empty directory at that host path, and the watcher crash-looped on 'is a directory'
    (hostile deploy check F2). Short-syntax entries may only name volumes."""
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                assert source in compose["volumes"], f"{name}: {volume} binds a host path"
            else:
                assert volume["type"] in ("bind", "volume"), (name, volume)
    targets = {
        v["target"]: v["source"]
        for v in compose["services"]["watcher"]["volumes"]
        if isinstance(v, dict)
    }
    assert targets["/etc/opsq/kubeconfig"] == "${KUBECONFIG_FILE:-~/.kube/config}"


def test_the_shipped_config_starts_the_logs_profile(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deploy/opsq.yaml, the config compose mounts by default, gives the agent of
    `--profile logs` globs under its host log mount: with none the agent exited 2
    ('logs.agent.paths is empty') and restarted forever (hostile deploy check F1)."""
    agent = compose["services"]["agent"]
    for key, value in agent["environment"].items():
        if key.startswith("OPSQ_") and key != "OPSQ_CONFIG":
            monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("OPSQ_LOGS__AGENT__CHECKPOINT_DIR", str(tmp_path))
    settings = load_settings(ROOT / "deploy" / "opsq.yaml")
    mount = next(
        v["target"]
        for v in agent["volumes"]
        if isinstance(v, dict) and v["source"].startswith("${OPSQ_LOG_DIR")
    )
    assert settings.logs.agent.paths
    assert all(p.startswith(mount + "/") for p in settings.logs.agent.paths)


def test_the_agent_reads_root_group_logs_as_the_chart_does(compose: dict[str, Any]) -> None:
    """Host logs are often root:root or root:adm 0640; uid 10001 reads them only through
    a supplementary group (the chart's agent.supplementalGroups is [0]) (F3)."""
    assert {"0", "4"} <= set(compose["services"]["agent"]["group_add"])


def test_opsq_containers_are_hardened(compose: dict[str, Any]) -> None:
    """Read-only root, non-root user, all capabilities dropped, no privilege escalation."""
    for name in OPSQ_SERVICES:
        svc = compose["services"][name]
        assert svc["read_only"] is True, name
        assert not svc["user"].startswith("0"), name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "stop_grace_period" in svc, name


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    """Every stage FROM the BASE build argument, python:3.11-slim by default; a numeric
    non-root USER, a HEALTHCHECK, no .pyc writes."""
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text.splitlines()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms
    assert all(f == "${BASE}" for f in froms)
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text


def test_every_opsq_variable_in_compose_is_a_real_setting(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each service's OPSQ_* environment loads through opsq's settings without error
    (a file the containers mount under /etc/opsq, the kubeconfig, is an empty file here:
    settings check that it exists)."""
    for name in OPSQ_SERVICES:
        with monkeypatch.context() as patch:
            for key, value in compose["services"][name]["environment"].items():
                if key.startswith("OPSQ_") and key != "OPSQ_CONFIG":
                    patch.setenv(key, _host_stand_in(str(value), tmp_path))
            load_settings(None)  # ConfigError on an unknown or invalid variable


def _host_stand_in(value: str, tmp_path: Path) -> str:
    if not value.startswith("/etc/opsq/"):
        return value
    stand_in = tmp_path / Path(value).name
    stand_in.touch()
    return str(stand_in)


def _compose_commands(text: str) -> list[str]:
    return [
        line.lstrip("# ").split("  #")[0]
        for line in text.splitlines()
        if "docker compose" in line and " up" in line
    ]


def test_the_documented_compose_commands_keep_the_workers_and_the_passwords() -> None:
    """Each documented `docker compose ... up` repeats `--scale worker=`: the README's
    second command (`--profile logs --profile cleanup up -d`) silently scaled 3 workers
    back to 1 (F4). The passwords live in `.env`, not on one command line: the second
    command, and even `down` or `logs`, refused to run without FLOWER_PASSWORD (F5);
    `.env` is ignored by git and kept out of the build context."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Production: Docker Compose", 1)[1].split("\n### ", 1)[0]
    header = (ROOT / "docker-compose.yml").read_text().split("\nx-", 1)[0]
    for text in (section, header):
        commands = _compose_commands(text)
        assert len(commands) >= 2, text
        for command in commands:
            assert "--scale worker=" in command, command
            assert "PASSWORD=" not in command, command
        assert ".env" in text
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().split(), ignore

"""docker-compose.yml run for real: every component up, probes, and faults that lose nothing.

The module builds local images (tests/deploy/docker.py: a debootstrap base and a Redis
look-alike, both cached by recipe hash; the opsq image from the project's Dockerfile
with ``BASE`` pointing at that base), then runs the repository's docker-compose.yml
unchanged, with the logs and cleanup profiles and ``--scale worker=3``, plus a target
HTTP container (tests/deploy/compose.test.yml). The watcher and the cleanup worker talk
to the fake Kubernetes API server, served by this process on the compose network's
gateway address. Proved, in file order on one stack:

- every service starts and becomes healthy and ready, profiles included, none restarting;
- every opsq container runs as uid 10001 on a read-only root with a writable data dir;
- ``opsq probe --wait`` inside the network reports the target's up and down endpoints;
- a line in a host log file reaches the shipper's sink;
- a worker container SIGKILLed mid-run and Redis restarted mid-run: every target of the
  run still gets exactly one result.

At the end the stack is removed and a dockerd started here is stopped by its PID. It
skips only where Docker cannot run at all, and never under CI=true.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from opsq.core import keys
from opsq.core.redis_server import free_port
from tests.cleanup.objects import pod
from tests.deploy.docker import (
    ROOT,
    Compose,
    Daemon,
    DockerUnavailable,
    build_opsq_image,
    exclusive,
    local_bases,
    run,
)
from tests.deploy.util import pid_alive, wait_for
from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube
from tests.support.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE = "opsq:test"
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
SERVICES = ("redis", *OPSQ_SERVICES, "target")
WORKERS = 3
# Each opsq container's readiness endpoint (port inside the container; Flower has its own).
READY = {
    "worker": "9464/readyz",
    "beat": "9464/readyz",
    "agent": "9465/readyz",
    "shipper": "9466/readyz",
    "watcher": "9464/readyz",
    "cleanup-worker": "9464/readyz",
    "flower": "5555/healthcheck",
    "web": "8080/readyz",
}
# Short redelivery so a killed worker's batches come back within seconds (the same
# settings an operator would change); batches of one spread the run over every worker.
CONFIG = {
    "log_format": "json",
    "visibility_timeout": 10,
    "probes": {"batch_size": 1, "soft_time_limit": 6, "time_limit": 8},
    "logs": {
        "agent": {"paths": ["/var/log/host/*.log"]},
        "shipper": {"sink": {"type": "file", "path": "/var/lib/opsq/shipped.jsonl"}},
    },
    "cleanup": {
        "rules": [{"name": "old-pods", "resource": "v1/pods", "when": {"older_than": "1h"}}]
    },
}


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll every half second (each poll may start a `docker exec`)."""
    assert wait_for(predicate, timeout, interval=0.5), f"timed out after {timeout:.0f}s: {what}"


@dataclass
class Stack:
    compose: Compose
    docker: str
    work: Path

    def container(self, service: str) -> str:
        return self.compose.containers(service)[0]

    def exec(
        self, container: str, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.docker, "exec", container, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert not check or proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        return proc

    def redis(self, *argv: str) -> str:
        return self.exec(self.container("redis"), "valkey-cli", *argv).stdout.strip()

    def inspect(self, template: str, *containers: str) -> list[str]:
        return run([self.docker, "inspect", "--format", template, *containers]).splitlines()

    def probe(self, targets: list[dict[str, str]], name: str) -> subprocess.Popen[str]:
        """`opsq probe --wait --output json` in a one-off worker container on the network."""
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"targets": targets}))
        path.chmod(0o644)
        return self.compose.popen(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "-v",
            f"{path}:/targets.yaml:ro",
            "worker",
            "opsq",
            "probe",
            "/targets.yaml",
            "--wait",
            "--output",
            "json",
            "--timeout",
            "240",
        )


def _tools() -> dict[str, str]:
    return {
        "/usr/bin/docker": require_tool("/usr/bin/docker"),
        "dockerd": require_tool("dockerd"),
        "docker-compose": require_tool("docker-compose"),
        "debootstrap": require_tool("debootstrap"),
    }


def _prepare(work: Path) -> dict[str, str]:
    """Config, host log dir and kubeconfig for the containers (readable by uid 10001)."""
    work.chmod(0o755)
    config = work / "opsq.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = work / "hostlogs"
    logs.mkdir(mode=0o755)
    (logs / "app.log").write_text("first line\n")
    kubeconfig = work / "kubeconfig"
    kubeconfig.touch(mode=0o644)  # filled in once the network's gateway is known
    for path in (config, logs / "app.log", kubeconfig):
        path.chmod(0o644)
    return {
        "OPSQ_IMAGE": IMAGE,
        "FLOWER_PASSWORD": secrets.token_hex(12),
        "FLOWER_PORT": str(free_port()),
        "OPSQ_WEB_PASSWORD": secrets.token_hex(12),
        "OPSQ_WEB_PORT": str(free_port()),
        "OPSQ_CONFIG_FILE": str(config),
        "OPSQ_LOG_DIR": str(logs),
        "KUBECONFIG_FILE": str(kubeconfig),
    }


def _gateway(stack: Stack) -> str:
    network = f"{stack.compose.project}_default"
    return run(
        [
            stack.docker,
            "network",
            "inspect",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
            network,
        ]
    ).strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tools = _tools()
    work = tmp_path_factory.mktemp("compose")
    with exclusive():
        daemon = Daemon(tools["/usr/bin/docker"], tools["dockerd"], work / "dockerd.log")
        try:
            daemon.ensure()
        except DockerUnavailable as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"Docker must run under CI=true: {exc}")
            pytest.skip(f"Docker cannot run on this machine: {exc}")
        try:
            yield from _run_stack(tools, work)
        finally:
            pid = daemon.stop()
            assert pid is None or not pid_alive(pid), f"dockerd {pid} still running"


def _run_stack(tools: dict[str, str], work: Path) -> Iterator[Stack]:
    docker = tools["/usr/bin/docker"]
    base, redis_image = local_bases(docker, tools["debootstrap"], work)
    build_opsq_image(docker, base, IMAGE)
    env = {**_prepare(work), "OPSQ_REDIS_IMAGE": redis_image, "OPSQ_BASE_IMAGE": base}
    compose = Compose(
        tools["docker-compose"],
        docker,
        f"opsqtest{os.getpid()}",
        [ROOT / "docker-compose.yml", ROOT / "tests/deploy/compose.test.yml"],
        env,
        profiles=("logs", "cleanup"),
    )
    stack = Stack(compose, docker, work)
    kube: FakeKube | None = None
    try:
        compose("up", "--no-start", "--no-build", "--scale", f"worker={WORKERS}")
        gateway = _gateway(stack)
        kube = FakeKube(host=gateway).start()
        kube.create("v1/pods", pod("old", created=0.0), "default")
        FakeKube.write_kubeconfig(
            Path(env["KUBECONFIG_FILE"]), f"http://{gateway}:{kube.port}", ADMIN_TOKEN
        )
        compose("up", "--detach", "--no-build", "--scale", f"worker={WORKERS}")
        yield stack
    finally:
        (work / "compose.log").write_text(
            subprocess.run(
                compose.argv("logs", "--no-color", "--tail", "200"),
                env=compose.env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        )
        compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
        if kube is not None:
            kube.stop()


def _states(stack: Stack) -> dict[str, str]:
    ids = stack.compose.containers()
    template = "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
    return dict(line.split() for line in stack.inspect(template, *ids))


def test_every_service_starts_healthy_and_ready_profiles_included(stack: Stack) -> None:
    """redis, three workers, beat, flower, agent, shipper, watcher, cleanup-worker and the
    target all turn healthy; each opsq component's readiness endpoint answers 200; none
    has restarted (the tmpfs data dir is writable by uid 10001)."""
    assert len(stack.compose.containers("worker")) == WORKERS
    wait_until(lambda: set(_states(stack).values()) == {"healthy"}, 180, "every container healthy")
    assert len(_states(stack)) == len(SERVICES) + WORKERS - 1
    for service, endpoint in READY.items():
        for container in stack.compose.containers(service):
            url = f"http://127.0.0.1:{endpoint}"
            code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"
            wait_until(
                lambda c=container, s=code: (
                    stack.exec(
                        c,
                        "python",
                        "-c",
                        s,  # type: ignore[misc]
                        check=False,
                    ).returncode
                    == 0
                ),
                60,
                f"{service} ready at {url}",
            )
    assert set(stack.inspect("{{.RestartCount}}", *stack.compose.containers())) == {"0"}


def test_opsq_containers_run_as_uid_10001_on_a_read_only_root(stack: Stack) -> None:
    """The image's user is 10001; each opsq container runs as 10001 with a read-only
    root, and its data dir and /tmp are writable by it."""
    assert stack.inspect("{{.Config.User}}", IMAGE) == ["10001:10001"]
    for service in OPSQ_SERVICES:
        container = stack.container(service)
        assert stack.exec(container, "id", "-u").stdout.strip() == "10001", service
        assert stack.inspect("{{.HostConfig.ReadonlyRootfs}}", container) == ["true"]
        denied = stack.exec(container, "touch", "/opt/opsq/written", check=False)
        assert denied.returncode != 0, service
        assert "Read-only file system" in denied.stderr, service
        stack.exec(container, "touch", "/var/lib/opsq/written", "/tmp/written")


def test_probe_inside_the_network_reports_the_targets_up_and_down(stack: Stack) -> None:
    """`opsq probe --wait` in a container on the compose network probes the target
    container: /healthy is up, /failing is down, exit code 1 (a target is down)."""
    targets = [
        {"name": "healthy", "url": "http://target:8080/healthy"},
        {"name": "failing", "url": "http://target:8080/failing"},
    ]
    proc = stack.probe(targets, "first")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    summary = json.loads(out)
    states = {r["name"]: r["up"] for r in summary["results"]}
    assert states == {"healthy": True, "failing": False}


def test_status_page_answers_401_without_and_200_with_the_password(stack: Stack) -> None:
    """The web service, on its published port: 401 without credentials, 200 with the
    compose password; the API lists the probe sets' states (none configured here)."""
    import base64  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    url = f"http://127.0.0.1:{stack.compose.env['OPSQ_WEB_PORT']}/api/v1/status"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url, timeout=10)
    assert denied.value.code == 401
    token = base64.b64encode(f"opsq:{stack.compose.env['OPSQ_WEB_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["totals"]["targets"] == 0


def test_a_host_log_line_reaches_the_shippers_sink(stack: Stack) -> None:
    """The agent tails the host log dir (mounted read-only), the shipper writes the file
    sink in its own data dir."""
    with (stack.work / "hostlogs" / "app.log").open("a") as log:
        log.write("a line from the host\n")
    shipper = stack.container("shipper")

    def shipped() -> bool:
        got = stack.exec(shipper, "cat", "/var/lib/opsq/shipped.jsonl", check=False).stdout
        return "a line from the host" in got

    wait_until(shipped, 90, "the line in the shipper's sink")


def test_killed_worker_and_restarted_redis_lose_no_result(stack: Stack) -> None:
    """Mid-run, one of three worker containers is SIGKILLed and Redis is restarted (AOF
    on its volume). The run still finishes with exactly one result per target: the
    killed worker's unacknowledged batches are delivered again after the visibility
    timeout, and the waiting CLI keeps polling through the Redis restart."""
    before = set(stack.redis("zrange", keys.RUNS_INDEX, "0", "-1").split())
    targets = [{"name": f"slow{i}", "url": f"http://target:8080/slow?i={i}"} for i in range(60)]
    targets += [{"name": f"down{i}", "url": f"http://target:8080/failing?i={i}"} for i in range(4)]
    proc = stack.probe(targets, "faults")

    def new_run() -> str | None:
        runs = set(stack.redis("zrange", keys.RUNS_INDEX, "0", "-1").split()) - before
        return next(iter(runs), None)

    wait_until(new_run, 120, "the run")
    run_id = new_run()
    assert run_id is not None
    wait_until(
        lambda: int(stack.redis("hlen", keys.run_results(run_id)) or 0) > 0, 60, "the first results"
    )
    victim = stack.compose.containers("worker")[0]
    run([stack.docker, "kill", "--signal", "KILL", victim])
    done = int(stack.redis("hlen", keys.run_results(run_id)))
    assert done < len(targets), "the run finished before the worker was killed"
    run([stack.docker, "restart", "--time", "10", stack.container("redis")])

    out, err = proc.communicate(timeout=300)
    summary = json.loads(out)
    names = [r["name"] for r in summary["results"]]
    assert sorted(names) == sorted(t["name"] for t in targets), err
    assert (summary["up"], summary["down"], summary["pending"]) == (60, 4, 0)
    assert proc.returncode == 1  # the /failing targets are down
    deliveries = stack.redis("hvals", keys.run_attempts(run_id)).split()
    assert any(int(d) > 1 for d in deliveries), "no batch was redelivered: nothing was lost?"

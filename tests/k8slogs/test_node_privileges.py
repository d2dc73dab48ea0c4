"""The agent on a node's real file ownerships, with exactly the chart's securityContext.

A node's container logs are ``root:root 0640`` in root-owned ``0755`` directories
(containerd ``openLogFile``; the kubelet's ``MkdirAll(..., 0755)``), and the kubelet
creates a ``DirectoryOrCreate`` hostPath as ``root:root 0755``. These tests build that
tree as root, then run the rendered init container and the rendered agent container
under ``setpriv`` with the uid, gid, supplementary groups (pod ``supplementalGroups`` and
``fsGroup``, as the kubelet adds them), capability bounding set and no_new_privs the
chart renders - what runc does before it execs the container's command.

Two controls prove why the chart is built this way: without the root group the agent
cannot read the logs, and non-root plus ``CAP_DAC_READ_SEARCH`` (the usual suggestion)
reads nothing either, because execve() as a non-root user clears every capability that
is not ambient, and Kubernetes sets none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from opsq.core.logformat import decode
from tests.deploy.chart import find, render_chart
from tests.k8slogs.runtimes import Clock, CriWriter
from tests.logs_agent.process import AgentProcess
from tests.support.tools import require_tool

STREAM = "opsq:test:k8s-privileges"
POD_DIR = "shop_web-0_0b6a8f2e-0000-4000-8000-000000000001"
LINES = [b"first line", b"second line", b"third line"]


@pytest.fixture(scope="module")
def chart_pod() -> dict[str, Any]:
    objects = render_chart({"agent": {"enabled": True}})
    spec: dict[str, Any] = find(objects, "DaemonSet", "opsq-agent")[0]["spec"]["template"]["spec"]
    return spec


def setpriv_argv(pod_sc: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    """``setpriv`` arguments for a container: what runc applies before exec."""
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", 0))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", 0))
    groups = [*pod_sc.get("supplementalGroups", [])]
    if "fsGroup" in pod_sc:
        groups.append(pod_sc["fsGroup"])
    caps = sc.get("capabilities") or {}
    assert caps.get("drop") == ["ALL"], "the chart drops every capability first"
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps.get("add", []))])
    argv = [require_tool("setpriv"), f"--reuid={uid}", f"--regid={gid}"]
    argv.append(f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups")
    argv += [f"--bounding-set={bounding}", "--inh-caps=-all"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--no-new-privs")
    return argv


@pytest.fixture
def node() -> Iterator[Path]:
    """A node's /var/log/pods and checkpoint hostPath, with the kubelet's ownerships."""
    if os.geteuid() != 0:
        pytest.skip("building root-owned node files needs root (the test suite runs as root)")
    root = Path(tempfile.mkdtemp(prefix="opsq-node-", dir="/tmp"))
    root.chmod(0o755)
    log = root / "var/log/pods" / POD_DIR / "app" / "0.log"
    log.parent.mkdir(parents=True, mode=0o755)
    for parent in [log.parent, *log.parent.parents]:
        if parent == root.parent:
            break
        parent.chmod(0o755)
    writer = CriWriter(log, Clock(1_795_000_000 * 10**9))
    writer.write("stdout", b"".join(line + b"\n" for line in LINES))
    writer.close()
    os.chown(log, 0, 0)
    assert oct(log.stat().st_mode & 0o777) == "0o640"
    ckpt = root / "var/lib/opsq/agent"
    ckpt.mkdir(parents=True, mode=0o755)  # hostPath DirectoryOrCreate
    for parent in (ckpt, ckpt.parent, ckpt.parent.parent):
        parent.chmod(0o755)
    yield root
    shutil.rmtree(root)


def run_init(chart_pod: dict[str, Any], node: Path) -> None:
    [init] = chart_pod["initContainers"]
    mount = init["volumeMounts"][0]["mountPath"]
    host = str(node / "var/lib/opsq/agent")
    command = [host if arg == mount else arg for arg in init["command"]]
    argv = setpriv_argv(chart_pod["securityContext"], init["securityContext"])
    subprocess.run([*argv, *command], check=True, timeout=30)


def agent_process(node: Path, redis_url: str, prefix: list[str]) -> AgentProcess:
    config = {
        "paths": [str(node / "var/log/pods/*/*/*.log")],
        "checkpoint_dir": str(node / "var/lib/opsq/agent"),
        "format": "auto",
        "kubernetes": {"pods_dir": str(node / "var/log/pods")},
        "rescan_interval": 0.2,
        "checkpoint_every": 0.1,
    }
    proc = AgentProcess(node, redis_url, config, stream=STREAM, prefix=prefix)
    proc.config.chmod(0o644)
    return proc


def shipped(client: redis.Redis) -> list[bytes]:
    return [rec for _, f in client.xrange(STREAM) for _, rec in decode(f).records]


def test_the_rendered_security_context_reads_root_0640_logs_and_writes_checkpoints(
    chart_pod: dict[str, Any], node: Path, redis_url: str
) -> None:
    """Init (root, CAP_CHOWN only) gives the root-made checkpoint dir to the agent; the
    agent (uid 10001, no capabilities, group 0) reads the logs and writes checkpoints."""
    run_init(chart_pod, node)
    ckpt = node / "var/lib/opsq/agent"
    pod_sc = chart_pod["securityContext"]
    assert (ckpt.stat().st_uid, ckpt.stat().st_gid) == (pod_sc["runAsUser"], pod_sc["runAsGroup"])
    agent_sc = chart_pod["containers"][0]["securityContext"]
    proc = agent_process(node, redis_url, setpriv_argv(pod_sc, agent_sc)).start()
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while len(shipped(client)) < len(LINES) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.split(b" ", 3)[3] for r in shipped(client)] == LINES
        checkpoints = ckpt / "checkpoints.json"
        while not checkpoints.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoints.stat().st_uid == pod_sc["runAsUser"]
        assert proc.terminate() == 0
    finally:
        proc.stop()
        client.close()


def test_without_the_root_group_the_agent_reads_nothing(
    chart_pod: dict[str, Any], node: Path, redis_url: str
) -> None:
    """Control: the same container without supplementary group 0 (the old chart's
    ``supplementalGroups: [4]``) gets EPERM on every log file."""
    run_init(chart_pod, node)
    pod_sc = {**chart_pod["securityContext"], "supplementalGroups": [4]}
    agent_sc = chart_pod["containers"][0]["securityContext"]
    proc = agent_process(node, redis_url, setpriv_argv(pod_sc, agent_sc)).start()
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while b"Permission denied" not in proc.log_file.read_bytes():
            assert time.monotonic() < deadline, "the agent never tried the file"
            time.sleep(0.05)
        assert shipped(client) == []
    finally:
        proc.stop()
        client.close()


def test_non_root_with_cap_dac_read_search_cannot_read_as_kubernetes_runs_it(node: Path) -> None:
    """Control: ``capabilities.add: [DAC_READ_SEARCH]`` for uid 10001 puts the capability
    in the bounding set only; execve() clears it (no ambient set), so reads fail. Only an
    ambient capability - which Kubernetes never sets - would make it work."""
    log = next((node / "var/log/pods").rglob("0.log"))
    setpriv = require_tool("setpriv")
    user = [setpriv, "--reuid=10001", "--regid=10001", "--clear-groups"]
    as_kubernetes = [*user, "--bounding-set=-all,+dac_read_search", "--inh-caps=-all"]
    denied = subprocess.run(
        [*as_kubernetes, "--no-new-privs", "cat", str(log)], check=False, capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert denied.returncode != 0
    assert b"Permission denied" in denied.stderr
    ambient = [*user, "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    allowed = subprocess.run(
        [*ambient, "cat", str(log)], check=False, capture_output=True, timeout=30
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.count(b" stdout F ") == len(LINES)

"""Docker for the deployment tests: a daemon, local base images, the opsq image, compose.

No container registry is reachable on the project's machines, so nothing is pulled:

- the base image, a ``python:3.11-slim`` look-alike, is Debian bookworm made with
  ``debootstrap --variant=minbase`` from the machine's own Debian mirror, then
  ``docker import``-ed. It trusts the machine's extra CA certificates
  (``/usr/local/share/ca-certificates``) and sets ``PIP_CERT``, so pip inside
  ``docker build`` reaches the package index through a TLS-inspecting egress;
- the Redis image, a ``valkey/valkey:8`` look-alike, is the same root filesystem plus
  Debian's redis-server, answering to ``valkey-server``/``valkey-cli`` with protected
  mode off as the official image has it.

Both are tagged by a hash of their recipe (packages, mirror, CA certificates), so later
runs on one machine reuse them and a changed recipe builds anew; from nothing they take
about a minute. The opsq image is then built by the project's own Dockerfile with
``BASE`` pointing at the local base (BuildKit's cache keeps the dependency layer).

The daemon: a running one is used as it is; otherwise ``dockerd`` is started with
default flags and stopped by its PID at the end. There is one daemon per machine and
several worktrees' test sessions may run at once, so a test holds :func:`exclusive`
for as long as it uses Docker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK_PATH = Path("/tmp/opsq-docker-tests.lock")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
REDIS_PACKAGES = ("redis-server",)
CA_DIR = Path("/usr/local/share/ca-certificates")
RECIPE_VERSION = "1"  # bump when the steps below change what the images contain
# The official valkey image turns protected mode off (a container's port is only
# reachable on its network); Debian's redis-server keeps it on without a config file.
VALKEY_SERVER = '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n'


class DockerUnavailable(RuntimeError):
    """Docker cannot run on this machine (no daemon could be started)."""


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Hold the machine-wide lock of the tests that use Docker."""
    with LOCK_PATH.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(argv: Sequence[str], *, timeout: float = 300, **kwargs: object) -> str:
    """Run *argv*; its stdout, or an AssertionError carrying its output."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return str(proc.stdout)


class Daemon:
    """The machine's dockerd: used if running, else started here and stopped by PID."""

    def __init__(self, docker: str, dockerd: str, log_path: Path) -> None:
        self.docker, self.dockerd, self.log_path = docker, dockerd, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        probe = subprocess.run(
            [self.docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return probe.returncode == 0

    def ensure(self, timeout: float = 90) -> None:
        if self.answers():
            return
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise DockerUnavailable(f"dockerd did not come up:\n{tail}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the dockerd started here (it stops its containerd) and wait; its PID."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.pid


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:(.*)$", stanza, re.MULTILINE)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        found = re.search(rf"^deb\s+(\S+)\s+{SUITE}\s", sources.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def _certificates() -> list[Path]:
    return sorted(CA_DIR.glob("**/*.crt")) if CA_DIR.is_dir() else []


def recipe_hash(mirror: str) -> str:
    digest = hashlib.sha256(
        f"{RECIPE_VERSION} {SUITE} {mirror} {BASE_PACKAGES} {REDIS_PACKAGES}".encode()
    )
    for cert in _certificates():
        digest.update(cert.read_bytes())
    return digest.hexdigest()[:12]


def image_exists(docker: str, tag: str) -> bool:
    probe = subprocess.run([docker, "image", "inspect", tag], capture_output=True, check=False)
    return probe.returncode == 0


def _import(docker: str, rootfs: Path, tag: str, changes: Sequence[str]) -> None:
    flags = [part for change in changes for part in ("--change", change)]
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(rootfs),
            "--exclude=./var/lib/apt/lists/*",
            "--exclude=./var/cache/apt/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        run([docker, "import", *flags, "-", tag], stdin=tar.stdout, timeout=300)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()


def _bootstrap(debootstrap: str, rootfs: Path, mirror: str) -> None:
    run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        timeout=900,
    )
    for cert in _certificates():
        shutil.copy(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
    run(["chroot", str(rootfs), "update-ca-certificates"])


def _add_redis(rootfs: Path) -> None:
    """Debian's redis-server into the same tree (debootstrap left apt's lists there)."""
    policy = rootfs / "usr/sbin/policy-rc.d"  # no service starts inside the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(
        [
            "chroot",
            str(rootfs),
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *REDIS_PACKAGES,
        ],
        env=env,
        timeout=600,
    )
    policy.unlink()
    server = rootfs / "usr/local/bin/valkey-server"
    server.write_text(VALKEY_SERVER)
    server.chmod(0o755)
    (rootfs / "usr/local/bin/valkey-cli").symlink_to("/usr/bin/redis-cli")
    (rootfs / "data").mkdir(exist_ok=True)


def local_bases(docker: str, debootstrap: str, workdir: Path) -> tuple[str, str]:
    """(base image, Redis image) tags, built from nothing unless this recipe's exist."""
    mirror = debian_mirror()
    digest = recipe_hash(mirror)
    base, redis = f"opsq-test-base:{digest}", f"opsq-test-redis:{digest}"
    if image_exists(docker, base) and image_exists(docker, redis):
        return base, redis
    rootfs = workdir / "rootfs"
    try:
        _bootstrap(debootstrap, rootfs, mirror)
        env = ["ENV LANG=C.UTF-8", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
        _import(docker, rootfs, base, [*env, 'CMD ["python3"]'])
        _add_redis(rootfs)
        _import(
            docker, rootfs, redis, [*env, "WORKDIR /data", "EXPOSE 6379", 'CMD ["valkey-server"]']
        )
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    _remove_other_tags(docker, ("opsq-test-base", "opsq-test-redis"), digest)
    return base, redis


def _remove_other_tags(docker: str, repositories: Sequence[str], keep: str) -> None:
    """Images of an older recipe: no longer used, a few hundred MB each."""
    for repository in repositories:
        tags = run([docker, "image", "ls", repository, "--format", "{{.Tag}}"]).split()
        stale = [f"{repository}:{tag}" for tag in tags if tag != keep]
        if stale:
            subprocess.run([docker, "image", "rm", *stale], capture_output=True, check=False)


def build_opsq_image(docker: str, base: str, tag: str) -> None:
    """The project's Dockerfile on the local base (BuildKit: cached dependency layer)."""
    commit = run(["git", "rev-parse", "HEAD"], cwd=ROOT).strip()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    run(
        [
            docker,
            "build",
            "--quiet",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"OPSQ_BUILD_COMMIT={commit}",
            "-t",
            tag,
            str(ROOT),
        ],
        env=env,
        timeout=900,
    )
    # The previous build of the tag is left dangling: drop it (the build cache stays).
    subprocess.run([docker, "image", "prune", "--force"], capture_output=True, check=False)


class Compose:
    """docker-compose for one project: the repo's file plus test-only additions."""

    def __init__(
        self,
        binary: str,
        docker: str,
        project: str,
        files: Sequence[Path],
        env: dict[str, str],
        profiles: Sequence[str] = (),
    ) -> None:
        self.binary, self.docker, self.project = binary, docker, project
        self.options = [part for file in files for part in ("-f", str(file))]
        self.options += [part for profile in profiles for part in ("--profile", profile)]
        self.env = {**os.environ, **env}

    def argv(self, *args: str) -> list[str]:
        return [
            self.binary,
            "--project-name",
            self.project,
            "--project-directory",
            str(ROOT),
            *self.options,
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        return run(self.argv(*args), env=self.env, cwd=ROOT, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env,
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def containers(self, service: str | None = None) -> list[str]:
        """IDs of the project's running containers (of *service*), oldest first; read
        from the daemon's labels, which is much cheaper than `docker-compose ps`."""
        labels = [f"com.docker.compose.project={self.project}", "com.docker.compose.oneoff=False"]
        if service is not None:
            labels.append(f"com.docker.compose.service={service}")
        filters = [part for label in labels for part in ("--filter", f"label={label}")]
        listed = run([self.docker, "ps", "--quiet", "--no-trunc", *filters])
        return listed.split()[::-1]  # docker ps lists the newest first

# One image for every opsq component: the command picks the role
# (`celery -A tasks worker|beat|flower`, `opsq agent|ship|watch`).
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module:
# python:3.11-slim for users; the tests build a local one with debootstrap because no
# registry is reachable there (tests/deploy/docker.py). Everything goes into a venv at
# /opt/opsq, so the same steps work whether python3 is /usr/local/bin's or Debian's.
# Two stages: the final image carries no pip cache, no build tools, no source tree.
# Every package is installed at the version constraints.txt pins (scripts/lock).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG OPSQ_BUILD_COMMIT=unknown
ENV OPSQ_BUILD_COMMIT=${OPSQ_BUILD_COMMIT} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/src/constraints.txt
WORKDIR /src
RUN python3 -m venv /opt/opsq
COPY constraints.txt pyproject.toml ./
# Dependencies first, in their own layer: a code change does not reinstall them.
# (PIP_CONSTRAINT also pins the build backend pip fetches for the project below.)
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/opsq/bin/pip install --quiet -c constraints.txt --upgrade pip \
    && /opt/opsq/bin/pip install --quiet -c constraints.txt -r requirements.txt
COPY hatch_build.py README.md ./
COPY opsq ./opsq
COPY tasks ./tasks
COPY producers ./producers
COPY agents ./agents
RUN /opt/opsq/bin/pip install --quiet -c constraints.txt --no-deps . \
    && /opt/opsq/bin/opsq --version

FROM ${BASE}
# No .pyc writes (the root filesystem is read-only in Kubernetes and compose), unbuffered
# logs, HOME and the data dir on writable mounts.
ENV PATH=/opt/opsq/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    OPSQ_DATA_DIR=/var/lib/opsq \
    OPSQ_METRICS__BIND=0.0.0.0 \
    OPSQ_METRICS__PORT=9464
COPY --from=build /opt/opsq /opt/opsq
# The data dir and the agent's checkpoint dir belong to uid 10001, so a named volume
# mounted there starts with that owner (Docker copies the image directory's owner).
RUN groupadd --system --gid 10001 opsq \
    && useradd --system --uid 10001 --gid opsq --home-dir /var/lib/opsq --shell /usr/sbin/nologin opsq \
    && mkdir -p /var/lib/opsq /var/lib/opsq-agent /etc/opsq \
    && chown opsq:opsq /var/lib/opsq /var/lib/opsq-agent
USER 10001:10001
WORKDIR /var/lib/opsq
VOLUME ["/var/lib/opsq"]
EXPOSE 9464 5555
# Liveness of whichever component runs here: its /healthz on the metrics port
# (Flower's service overrides this with /healthcheck on its own port).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request;urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTH_PORT', os.environ['OPSQ_METRICS__PORT']), timeout=2)"]
CMD ["opsq", "--help"]

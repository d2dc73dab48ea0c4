# One image for every opsq component: the command picks the role
# (`celery -A tasks worker|beat|flower`, `opsq agent|ship|watch`).
# Built in two stages so the final image carries no compiler, no pip cache, no git.

FROM python:3.11-slim AS build
ARG OPSQ_BUILD_COMMIT=unknown
ENV OPSQ_BUILD_COMMIT=${OPSQ_BUILD_COMMIT} PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml hatch_build.py README.md ./
COPY opsq ./opsq
COPY tasks ./tasks
COPY producers ./producers
COPY agents ./agents
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# No .pyc writes (the root filesystem is read-only in Kubernetes), unbuffered logs,
# HOME and the data dir on writable mounts.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    OPSQ_DATA_DIR=/var/lib/opsq \
    OPSQ_METRICS__BIND=0.0.0.0 \
    OPSQ_METRICS__PORT=9464
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels opsq \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 opsq \
    && useradd --system --uid 10001 --gid opsq --home-dir /var/lib/opsq --shell /usr/sbin/nologin opsq \
    && mkdir -p /var/lib/opsq /etc/opsq \
    && chown opsq:opsq /var/lib/opsq
USER 10001:10001
WORKDIR /var/lib/opsq
VOLUME ["/var/lib/opsq"]
EXPOSE 9464 5555
# Liveness of whichever component runs here: its /healthz on the metrics port
# (Flower's service overrides this with /healthcheck on its own port).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request;urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTH_PORT', os.environ['OPSQ_METRICS__PORT']), timeout=2)"]
CMD ["opsq", "--help"]

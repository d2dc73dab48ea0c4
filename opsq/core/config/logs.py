"""Log agent and shipper settings (the ``logs:`` section).

Shape::

    logs:
      stream: opsq:logs
      agent:
        paths: ["/var/log/app/*.log"]
        exclude: ["*.gz"]
        checkpoint_dir: /var/lib/opsq/agent
        read_from: head
      shipper:
        group: shippers
        sink: {type: file, path: /var/log/opsq/shipped.jsonl}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from opsq.core import keys
from opsq.core.config.base import Section
from opsq.core.config.fields import BytesRegex, HttpUrl, Regex
from opsq.core.durations import Duration


class MultilineSettings(Section):
    start_pattern: BytesRegex
    """A line matching this regex starts a new record; others are appended to it."""
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    max_lines: Annotated[int, Field(ge=1)] = 500


LogFormat = Literal["raw", "cri", "docker", "auto"]
"""How file lines are framed: as written (raw), by a container runtime, or detected."""


class NamespaceFilter(Section):
    include: list[str] = Field(default_factory=lambda: ["*"])
    """Namespace globs whose pods' files are read (from the path, no API needed)."""
    exclude: list[str] = Field(default_factory=list)
    """Namespace globs never read; wins over include."""


class PodMetadataSettings(Section):
    """Labels and annotations from a node-local pod informer (list + watch, no per-line call)."""

    enabled: bool = False
    labels: list[str] = Field(default_factory=lambda: ["*"])
    """Pod label keys (globs) copied into records as ``labels``."""
    annotations: list[str] = Field(default_factory=list)
    """Pod annotation keys (globs) copied into records as ``annotations``."""
    opt_out_annotation: str = "opsq.io/logs"
    """A pod annotated with this key set to "false" is not read."""
    kubeconfig: str | None = None
    """Default: the pod's service account (in cluster), else KUBECONFIG / ~/.kube/config."""
    sync_timeout: Annotated[Duration, Field(ge=0)] = 10.0
    """Pod files wait this long at start for the first LIST (opt-out needs it); then go."""
    pod_wait: Annotated[Duration, Field(ge=0)] = 5.0
    """A file of a pod the cache does not know yet waits this long for its watch event."""
    keep_deleted: Annotated[Duration, Field(ge=0)] = 60.0
    """A deleted pod's metadata stays this long, for its lines still being read."""
    watch_timeout: Annotated[Duration, Field(gt=0)] = 300.0


class KubernetesSettings(Section):
    """Pod identity from the kubelet's paths, optional metadata, namespace filters."""

    pods_dir: str = "/var/log/pods"
    containers_dir: str = "/var/log/containers"
    node_name: str | None = None
    """This node's name; default: the NODE_NAME variable (downward API)."""
    namespaces: NamespaceFilter = Field(default_factory=NamespaceFilter)
    metadata: PodMetadataSettings = Field(default_factory=PodMetadataSettings)


class AgentSettings(Section):
    paths: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    checkpoint_dir: Path = Path(".opsq/agent")
    read_from: Literal["head", "tail"] = "head"
    max_line_bytes: Annotated[int, Field(ge=64)] = 256 * 1024
    multiline: MultilineSettings | None = None
    ignore_older: Annotated[Duration, Field(ge=0)] | None = None
    rescan_interval: Annotated[Duration, Field(gt=0)] = 10.0
    max_depth: Annotated[int, Field(ge=0, le=64)] = 8
    """How many directories deep ``**`` in ``paths`` goes (it never follows directory links)."""
    follow_symlinks: bool = False
    """Read files that are symlinks (the target must resolve under ``symlink_roots``)."""
    symlink_roots: list[Path] = Field(default_factory=list)
    """Where a followed link's target may be; default: the fixed part of each of ``paths``
    (``/var/log/app`` for ``/var/log/app/*.log``)."""
    poll: bool = False
    """Force polling instead of inotify (network filesystems)."""
    rotated_grace: Annotated[Duration, Field(gt=0)] = 60.0
    """Keep reading a renamed file (or a deleted one with unread bytes) at most this long."""
    copytruncate_suffix: Regex = r"[.-][0-9][0-9_.-]*"
    """Regex (full match) for what logrotate appends to a file's name when it copies it
    (``.1``, ``-20240101``, ``-2024-01-01-1700000000``): where the agent looks for the
    copy after a copytruncate."""
    max_open_deleted: Annotated[int, Field(ge=0)] = 16
    batch_lines: Annotated[int, Field(ge=1)] = 2000
    batch_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    queue_entries: Annotated[int, Field(ge=1)] = 16
    """Bounded queue between readers and the sender, in stream entries. 16 x 2000 lines
    keeps the agent under its 60 MB RSS budget; 64 measured 69 MB and no faster."""
    on_full: Literal["block", "drop"] = "block"
    checkpoint_every_lines: Annotated[int, Field(ge=1)] = 10000
    checkpoint_every: Annotated[Duration, Field(gt=0)] = 1.0
    on_corrupt_checkpoint: Literal["head", "tail"] = "head"
    """Where to start when a checkpoint file is unreadable: re-send (head) or skip (tail)."""
    shutdown_grace: Annotated[Duration, Field(gt=0)] = 10.0
    maxlen: Annotated[int, Field(ge=1)] | None = None
    """Hard cap on stream length (drops unacknowledged entries, counted). Off by default."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9465
    format: LogFormat = "raw"
    """Line framing of every path (``auto``: from each file's first line)."""
    formats: dict[str, LogFormat] = Field(default_factory=dict)
    """Per-path framing: glob -> format; the first glob matching a file's path wins."""
    partial_timeout: Annotated[Duration, Field(gt=0)] = 5.0
    """A runtime's partial line with no more data for this long is shipped as it is."""
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)


LABEL_FIELDS = ("namespace", "pod", "container", "stream", "node", "host", "owner")
"""Record fields that may become Loki stream labels (bounded: never uid, line, path)."""
_NOT_IN_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def loki_label_name(field: str) -> str:
    """The Loki label a ``label_fields`` entry becomes. ``label.<key>`` is the pod label's
    key made a valid Loki (Prometheus) label name: other characters become ``_``, and a
    leading digit gets a ``_`` in front (``label.app.kubernetes.io/name`` ->
    ``app_kubernetes_io_name``)."""
    if not field.startswith("label."):
        return field
    name = _NOT_IN_LABEL.sub("_", field[6:])
    return "_" + name if name[:1].isdigit() else name


class SinkSettings(Section):
    type: Literal["file", "stdout", "loki", "elasticsearch"] = "stdout"
    path: Path | None = None
    max_bytes: Annotated[int, Field(ge=1024)] = 100 * 1024 * 1024
    backups: Annotated[int, Field(ge=0)] = 5
    url: HttpUrl | None = None
    index: str = "opsq-logs"
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    username: str | None = None
    """HTTP basic auth user for the Loki / Elasticsearch sinks."""
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    """Elasticsearch API key (sent as ``Authorization: ApiKey ...``)."""
    tenant: str | None = None
    """Loki tenant (``X-Scope-OrgID``) for multi-tenant Loki."""
    label_fields: list[str] = Field(
        default_factory=lambda: ["namespace", "pod", "container", "stream"]
    )
    """Loki stream labels of records with pod identity; ``label.<key>`` promotes a pod label."""

    @field_validator("label_fields")
    @classmethod
    def _bounded_labels(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in LABEL_FIELDS and not name.startswith("label."):
                raise ValueError(
                    f"{name!r} cannot be a Loki label; use {', '.join(LABEL_FIELDS)} or "
                    "label.<pod label key> (the pod uid, path and line have unbounded values)"
                )
            if name == "label.":
                raise ValueError("'label.' names no pod label; write label.<pod label key>")
        return value

    @model_validator(mode="after")
    def _distinct_labels(self) -> SinkSettings:
        seen: dict[str, str] = {key: f"labels.{key}" for key in self.labels}
        for name in self.label_fields:
            label = loki_label_name(name)
            if label in seen:
                raise ValueError(
                    f"label_fields: {name!r} and {seen[label]!r} would both be the Loki "
                    f"label {label!r}; keep one of them"
                )
            seen[label] = name
        return self

    @model_validator(mode="after")
    def _destination_given(self) -> SinkSettings:
        if self.type == "file" and self.path is None:
            raise ValueError(
                "the file sink needs a path: set logs.shipper.sink.path, "
                "e.g. /var/log/opsq/shipped.jsonl"
            )
        if self.type in ("loki", "elasticsearch") and not self.url:
            raise ValueError(
                f"the {self.type} sink needs a url: set logs.shipper.sink.url, "
                "e.g. http://127.0.0.1:3100 (loki) or http://127.0.0.1:9200 (elasticsearch)"
            )
        return self


class ShipperSettings(Section):
    group: str = keys.LOG_GROUP
    consumer: str | None = None
    """Stable consumer name; default: host name."""
    batch: Annotated[int, Field(ge=1)] = 100
    block: Annotated[Duration, Field(ge=0)] = 1.0
    claim_idle: Annotated[Duration, Field(gt=0)] = 60.0
    max_deliveries: Annotated[int, Field(ge=1)] = 5
    """Sink writes of an entry that may die unfinished (the shipper crashed or was killed
    during them) before the entry goes to the dead-letter stream. Restarts and sink
    outages do not count."""
    dead_retention: Annotated[Duration, Field(gt=0)] = 7 * 24 * 3600.0
    """Dead letters older than this are trimmed (counted in opsq_stream_trimmed_total)."""
    trim_interval: Annotated[Duration, Field(gt=0)] = 10.0
    shutdown_grace: Annotated[Duration, Field(gt=0)] = 10.0
    """On SIGTERM, keep retrying the in-flight batch against a failing sink this long."""
    sink: SinkSettings = Field(default_factory=SinkSettings)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9466


class LogsSettings(Section):
    stream: str = keys.LOG_STREAM
    agent: AgentSettings = Field(default_factory=AgentSettings)
    shipper: ShipperSettings = Field(default_factory=ShipperSettings)

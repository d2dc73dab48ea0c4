"""A protocol-faithful fake Kubernetes API server for tests (see server.py)."""

from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube, Fault, RequestRecord

__all__ = ["ADMIN_TOKEN", "FakeKube", "Fault", "RequestRecord"]

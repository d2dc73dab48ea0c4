"""``python -m tests.fakekube``: run the fake API server on its own for exploration.

Writes a kubeconfig per token (admin, plus one per subject bound in ``--rbac``) and
prints how to use them, then serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path

from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakekube", description=__doc__)
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--rbac", type=Path, help="YAML with Role/ClusterRole/(Cluster)RoleBinding")
    parser.add_argument("--dir", type=Path, help="where to write kubeconfigs (default: a temp dir)")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="plain HTTP (the kubernetes Python client still works; kubectl then sends no token)",
    )
    args = parser.parse_args(argv)

    fake = FakeKube(port=args.port, bookmark_interval=args.bookmark_interval, tls=not args.no_tls)
    out = args.dir or Path(tempfile.mkdtemp(prefix="fakekube-"))
    out.mkdir(parents=True, exist_ok=True)
    tokens = [("admin", ADMIN_TOKEN)]
    if args.rbac:
        tokens += [
            (user.name.replace(":", "_"), token)
            for token, user in fake.load_rbac(args.rbac.read_text())
        ]
    fake.start()
    print(f"fake Kubernetes API server on {fake.url}")
    for label, token in tokens:
        path = fake.kubeconfig(out / f"{label}.kubeconfig", token)
        print(f"  {label}: KUBECONFIG={path}  (token {token})")
    print(f"try: kubectl --kubeconfig {out / 'admin.kubeconfig'} get namespaces")

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

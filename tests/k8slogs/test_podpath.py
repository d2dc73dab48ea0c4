"""Pod identity from the kubelet's log paths and the /var/log/containers symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from agents.podpath import PodIdentity, identify, rotation_base, rotation_order

UID = "6f1c2a8e-4b3d-4c5e-9f00-1234567890ab"
CID = "a" * 64


def test_pods_path_gives_namespace_pod_uid_container_and_restart(tmp_path: Path) -> None:
    """/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log, rotated names included."""
    pods = str(tmp_path / "pods")
    path = f"{pods}/shop_web-7d9f8b6c5-x2x4q_{UID}/nginx/3.log"
    expected = PodIdentity("shop", "web-7d9f8b6c5-x2x4q", "nginx", UID, 3)
    assert identify(path, pods_dir=pods, containers_dir="/nowhere") == expected
    rotated = path + ".20261118-110640"
    assert identify(rotated, pods_dir=pods, containers_dir="/nowhere") == expected


def test_paths_outside_the_layout_have_no_identity(tmp_path: Path) -> None:
    """Other files, wrong depth, names that are not <n>.log: no guessing."""
    pods = str(tmp_path / "pods")
    for path in [
        "/var/log/app/app.log",
        f"{pods}/shop_web_{UID}/nginx/extra/0.log",
        f"{pods}/shop_web/nginx/0.log",
        f"{pods}/shop_web_{UID}/nginx/app.log",
    ]:
        assert identify(path, pods_dir=pods, containers_dir="/nowhere") is None, path


def test_containers_symlink_resolves_uid_and_restart_from_its_target(tmp_path: Path) -> None:
    """The symlink name has pod, namespace, container and id; the target adds uid and n."""
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    target = pods / f"shop_web_{UID}" / "nginx" / "2.log"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    containers.mkdir()
    link = containers / f"web_shop_nginx-{CID}.log"
    os.symlink(os.path.relpath(target, containers), link)
    found = identify(str(link), pods_dir=str(pods), containers_dir=str(containers))
    assert found == PodIdentity("shop", "web", "nginx", UID, 2, CID)


def test_a_dangling_containers_link_still_names_the_pod(tmp_path: Path) -> None:
    """Without a readable target the name alone still gives namespace, pod, container."""
    containers = tmp_path / "containers"
    containers.mkdir()
    link = containers / f"web_shop_side-car-{CID}.log"
    os.symlink("/gone/0.log", link)
    found = identify(str(link), pods_dir=str(tmp_path / "pods"), containers_dir=str(containers))
    assert found == PodIdentity("shop", "web", "side-car", container_id=CID)


def test_rotation_names_and_their_order() -> None:
    """kubelet stamps sort oldest first; Docker's .1 is newer than .2; the live file last."""
    assert rotation_base("/p/0.log.20261118-110640") == ("/p/0.log", "20261118-110640")
    assert rotation_base("/d/c-json.log.2") == ("/d/c-json.log", "2")
    assert rotation_base("/p/0.log.20261118-110640.gz") == ("/p/0.log.20261118-110640.gz", "")
    assert rotation_base("/p/0.log") == ("/p/0.log", "")
    names = ["", "20261118-110640", "20261117-000000"]
    assert sorted(names, key=rotation_order) == ["20261117-000000", "20261118-110640", ""]
    assert sorted(["1", "", "2"], key=rotation_order) == ["2", "1", ""]

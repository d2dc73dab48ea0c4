"""Dependencies: capped where opsq leans on private APIs, and locked for CI and the image.

``constraints.txt`` (written by ``scripts/lock``) pins every package the project and its
dev tools resolve to; ``make venv`` and the Dockerfile install with ``-c constraints.txt``
so a release on PyPI reaches CI and the image only when someone re-locks and the suite
passes. These tests prove the lock covers every requirement within pyproject's ranges,
that this environment was installed from it, and that both installers use it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PRIVATE_API_DEPENDENCIES = ("aiohttp", "httpx-aiohttp")


def project_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, build = pyproject["project"], pyproject["build-system"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    listed += build["requires"]
    return [Requirement(text) for text in listed]


def requirement(name: str) -> Requirement:
    return next(r for r in project_requirements() if canonicalize_name(r.name) == name)


def pins() -> dict[str, Version]:
    found = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            found[canonicalize_name(name)] = Version(version)
    return found


def applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({"extra": extra})


@pytest.mark.parametrize("name", PRIVATE_API_DEPENDENCIES)
def test_private_api_dependencies_are_capped_at_the_tested_minor(name: str) -> None:
    """aiohttp and httpx-aiohttp admit the installed (tested) minor release and nothing
    from the next minor on: TimedConnector overrides private aiohttp members."""
    spec = requirement(name).specifier
    installed = Version(metadata.version(name))
    assert installed in spec
    next_minor = Version(f"{installed.major}.{installed.minor + 1}")
    assert next_minor not in spec, f"pyproject.toml: cap {name} below {next_minor} ({spec})"
    assert Version(f"{installed.major}.{installed.minor + 5}") not in spec


def test_lock_pins_every_requirement_inside_its_pyproject_range() -> None:
    """Every runtime, dev and build-backend requirement has an exact pin in constraints.txt that its
    pyproject.toml range admits (a range edited without re-locking fails here)."""
    locked = pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{name} is not in constraints.txt: run scripts/lock"
        assert locked[name] in req.specifier, f"{name}=={locked[name]} outside {req}: lock again"


def closure() -> Iterator[tuple[str, str]]:
    """(name, installed version) of opsq[dev]'s dependencies, transitively."""
    seen: set[str] = set()
    todo = [(r, "dev") for r in map(Requirement, metadata.requires("opsq") or [])]
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or not applies(req, extra):
            continue
        seen.add(name)
        yield name, metadata.version(name)
        for sub in map(Requirement, metadata.requires(name) or []):
            todo += [(sub, e) for e in ("", *req.extras)]


def test_this_environment_was_installed_from_the_lock() -> None:
    """Each package opsq[dev] needs, as installed in the test environment, is at the
    version constraints.txt pins: `make venv` installed with the lock."""
    locked = pins()
    found = dict(closure())
    assert {"aiohttp", "pytest"} <= found.keys()  # the walk reached runtime and dev
    wrong = {n: (v, str(locked.get(n))) for n, v in found.items() if Version(v) != locked.get(n)}
    assert not wrong, f"installed vs locked: {wrong}; run `make venv` (or scripts/lock)"


def test_make_venv_and_the_dockerfile_install_with_the_lock() -> None:
    """Every pip install in the Makefile and the Dockerfile passes -c constraints.txt,
    and the image build context copies the file in."""
    makefile = (ROOT / "Makefile").read_text().splitlines()
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in [*makefile, *dockerfile.splitlines()] if "pip install" in line]
    assert len(installs) >= 3, installs
    for line in installs:
        assert "-c constraints.txt" in line, line
    assert any(line.startswith("COPY") and "constraints.txt" in line
               for line in dockerfile.splitlines())  # fmt: skip

"""A probe set's run keeps one chunk of target models alive, as ``opsq probe`` does.

Beat's ``opsq.probe_set`` collected every validated ``Target`` of the set's file for
the run's spec: a 100,000-target set peaked at 280 MB in the pool process on each tick
(``opsq probe`` of the same file: ~60 MB), against the README's "at most one batch of
models is alive" (hostile check 89 F9). The spec is now built a chunk at a time.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import yaml

from opsq.core.config.probes import Target
from opsq.core.settings import load_settings
from opsq.engines.monitor.setrun import checked_targets, set_batches
from opsq.engines.monitor.spec import SpecBuilder, build_spec

BATCH = 50


def _live_targets() -> int:
    return sum(type(o) is Target for o in gc.get_objects())


def test_a_set_file_is_loaded_with_one_chunk_of_models_alive(tmp_path: Path) -> None:
    """Counted at every chunk: never more than two chunks' models (the one being handed
    on and, at most, the previous one); the spec still names every target, in order."""
    entries = [{"name": f"t{i}", "url": f"http://127.0.0.1:1/?i={i}"} for i in range(1000)]
    entries[7]["failure_threshold"] = 5
    (tmp_path / "set.yaml").write_text(yaml.safe_dump({"targets": entries}))
    config = tmp_path / "opsq.yaml"
    config.write_text(yaml.safe_dump({"probes": {"sets": {"big": {"file": "set.yaml"}}}}))
    settings = load_settings(str(config))
    probe_set = settings.probes.sets["big"]
    builder = SpecBuilder("big", probe_set)
    alive: list[int] = []

    def spy(chunk: list[Target]) -> None:
        alive.append(_live_targets())
        builder.add(chunk)

    batches = set_batches(probe_set, BATCH, checked_targets("big", settings, spy))
    spec = builder.build(created_at=time.time())
    assert len(batches) == len(alive) == 1000 // BATCH
    assert max(alive) <= 2 * BATCH
    assert list(spec.names.values())[:2] == [("t0", entries[0]["url"]), ("t1", entries[1]["url"])]
    assert len(spec.names) == 1000
    every = [Target.model_validate(e) for e in entries]
    assert spec == build_spec("big", probe_set, every, created_at=spec.created_at)

"""Failures on purpose, for testing fault tolerance: a train spec's ``debug`` section.

Rank 0 raises once, at the first log step at or after ``debug.fail_at_step``, leaving
``FAIL_MARKER`` in the output folder so that the restarted worker group goes on. With
``debug.wipe_local_checkpoints`` it first deletes the output's checkpoints, as a group restarted
on a node with an empty disk would find it: the run must then resume from checkpoint_storage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from contracts.specs import DebugOptions

FAIL_MARKER = "injected_failure.json"


def fail_once(output: Path, step: int, debug: DebugOptions) -> None:
    """Raise the first time step reaches debug.fail_at_step; the marker survives the restart."""
    if debug.fail_at_step is None or step < debug.fail_at_step:
        return
    marker = output / FAIL_MARKER
    if marker.exists():
        return
    wipe = debug.wipe_local_checkpoints
    marker.write_text(json.dumps({"step": step, "wiped_checkpoints": wipe}))
    if wipe:
        shutil.rmtree(output / "checkpoints")
    raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")

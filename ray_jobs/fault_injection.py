"""Failures on purpose, for testing fault tolerance: a train spec's ``debug`` section.

Rank 0 raises once, at the first log step at or after ``debug.fail_at_step``, leaving
``FAIL_MARKER`` in the output (a path or URI) so that the restarted worker group goes on. With
``debug.wipe_local_checkpoints`` it first deletes this node's scratch copies (checkpoint staging
and downloads, the token-shard cache), as a group restarted on a node with an empty disk would
find it: the run must then resume from the checkpoints at the output alone.

``debug.pause_at_step`` holds rank 0 still once instead (the other ranks wait for it at their
next collective), after leaving ``PAUSE_MARKER``: a test that kills a node mid-run waits for the
marker rather than racing a short run to its end, and the restarted group, which finds the
marker, does not pause again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from contracts.specs import DebugOptions
from llm import storage

FAIL_MARKER = "injected_failure.json"
PAUSE_MARKER = "injected_pause.json"


def fail_once(output: str, step: int, debug: DebugOptions, scratch: list[Path]) -> None:
    """Raise the first time step reaches debug.fail_at_step; the marker survives the restart."""
    if debug.fail_at_step is None or step < debug.fail_at_step:
        return
    marker = storage.join(output, FAIL_MARKER)
    if storage.exists(marker):
        return
    wipe = debug.wipe_local_checkpoints
    storage.write_json(marker, {"step": step, "wiped_checkpoints": wipe})
    if wipe:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")


def pause_once(output: str, step: int, debug: DebugOptions) -> None:
    """Sleep debug.pause_s the first time step reaches debug.pause_at_step."""
    if debug.pause_at_step is None or step < debug.pause_at_step:
        return
    marker = storage.join(output, PAUSE_MARKER)
    if storage.exists(marker):
        return
    storage.write_json(marker, {"step": step, "pause_s": debug.pause_s})
    time.sleep(debug.pause_s)

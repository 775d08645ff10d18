"""Which checkpoints a run keeps: the newest K plus the best by validation loss.

This is the one retention policy. The trainer applies it to its output after every save: on
local disk here, on object storage through ``location.Checkpoints`` (the same rules on the URI).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.train.checkpoint.layout import STEP_DIR, is_complete, step_dir

BEST_FILE = "best.json"


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None  # None keeps every checkpoint

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 or None, got {self.keep_last}")

    def after_save(self, root: Path, step: int, best: dict[str, Any] | None) -> list[Path]:
        """Point best.json at step's checkpoint when it is the best so far, then prune;
        returns what was deleted. ``best`` is {"step", "val_loss"} or None."""
        if best is not None and best["step"] == step:
            record_best(root, step, best["val_loss"])
        if self.keep_last is None:
            return []
        keep = {best["step"]} if best is not None else set()
        return prune_checkpoints(root, self.keep_last, keep_steps=keep)


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete root/step_N checkpoint, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete root/step_N folder with the highest N, or None if there is none.

    Hidden in-progress (.tmp-*) and set-aside (.old-*) folders never match step_N.
    """
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def best_checkpoint(root: str | Path) -> dict[str, Any] | None:
    """root/best.json ({"step", "val_loss", "path"}) when a validated checkpoint was kept."""
    path = Path(root) / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_best(root: str | Path, step: int, val_loss: float) -> None:
    """Point root/best.json at step's checkpoint (written aside and renamed: never half)."""
    root = Path(root)
    entry = {"step": step, "val_loss": val_loss, "path": step_dir(root, step).name}
    tmp = root / f".{BEST_FILE}.tmp"
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, root / BEST_FILE)


def prune_checkpoints(root: str | Path, keep_last: int, *, keep_steps: set[int]) -> list[Path]:
    """Delete all but the newest keep_last complete checkpoints and those in keep_steps (the
    best one); return what was deleted. Incomplete folders are left for the next save to
    replace, since one may be another rank's save in progress."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    found = complete_checkpoints(root)
    newest = {step for step, _ in found[-keep_last:]}
    removed = []
    for step, folder in found:
        if step not in newest and step not in keep_steps:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed

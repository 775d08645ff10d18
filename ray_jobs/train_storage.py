"""Where a train job's checkpoints live beyond the node that wrote them: Ray Train storage.

With ``TrainSpec.checkpoint_storage`` (``s3://bucket/prefix`` or a folder every node sees),
rank 0 hands each checkpoint it writes to Ray Train (``ray.train.report(checkpoint=…)``), which
persists it under the RunConfig's storage path. Retention is the run's own
``llm.train.checkpoint.Retention`` mirrored, not decided again: Ray keeps the newest
``keep_last``, and the best one by validation loss is copied to ``<storage>/best/step_N`` with
``<storage>/best.json`` naming it. A worker group that Ray Train restarts, possibly on other
nodes with empty disks, first copies the latest persisted checkpoint back into its output
folder, where the trainer's usual resume finds it. Without checkpoint_storage, checkpoints
stay in the output folder only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import ray.train
import torch.distributed as dist
from pyarrow import fs
from ray.train import Checkpoint, CheckpointConfig

from llm import storage
from llm.train.checkpoint import (
    STATE_FILE,
    Retention,
    best_checkpoint,
    complete_checkpoints,
    move_into_place,
    step_dir,
)


def run_storage(uri: str, retention: Retention) -> dict[str, Any]:
    """RunConfig arguments that persist reported checkpoints at uri, kept as retention says."""
    filesystem, path = storage.filesystem(uri)
    return {
        "storage_path": path,
        "storage_filesystem": filesystem,
        "checkpoint_config": CheckpointConfig(num_to_keep=retention.keep_last),
    }


def restore_from_storage(out: Path) -> int | None:
    """Copy Ray Train's latest checkpoint into out/checkpoints unless it is already there;
    returns its step. Called by every rank before training; one per node copies."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    step = None
    if ray.train.get_context().get_local_rank() == 0:
        with checkpoint.as_directory() as folder:
            step = int(json.loads((Path(folder) / STATE_FILE).read_text())["step"])
            root = out / "checkpoints"
            if step not in {s for s, _ in complete_checkpoints(root)}:
                tmp = root / f".restore-{step}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(folder, tmp)
                move_into_place(tmp, step_dir(root, step))
                print(f"restored the step-{step} checkpoint from {checkpoint.path}", flush=True)
    if dist.is_initialized():
        dist.barrier()  # the other ranks on this node read what local rank 0 copied
    return step


def report(metrics: dict[str, float], path: Path | None, storage_uri: str | None) -> None:
    """Report to Ray Train from every rank; rank 0 (the one with a path) attaches its
    checkpoint when checkpoints are persisted, and refreshes the stored best one."""
    if storage_uri is None or path is None:
        ray.train.report(metrics)
        return
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)))
    best = best_checkpoint(path.parent)
    if best is not None and best["path"] == path.name:
        _store_best(path, best, storage_uri)


def _store_best(path: Path, best: dict[str, Any], uri: str) -> None:
    filesystem, base = storage.filesystem(uri.rstrip("/"))
    target = f"{base}/best/{path.name}"
    filesystem.create_dir(target, recursive=True)
    fs.copy_files(
        str(path),
        target,
        source_filesystem=fs.LocalFileSystem(),
        destination_filesystem=filesystem,
    )
    # the pointer is written last, so a reader never follows it to a half copy
    with filesystem.open_output_stream(f"{base}/best.json") as f:
        f.write(json.dumps({**best, "uri": f"{uri.rstrip('/')}/best/{path.name}"}).encode())
    selector = fs.FileSelector(f"{base}/best", allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type == fs.FileType.Directory and not info.path.endswith(f"/{path.name}"):
            filesystem.delete_dir(info.path)

"""Where a run's checkpoints live: ``<output>/checkpoints`` on a local path or object storage.

On a local path (one machine, or a disk every node mounts) checkpoints are written in place,
as ``layout`` describes. On object storage pods share no disk, so:

- every rank writes its part of a checkpoint into a staging folder of its own in node-local
  scratch (the full layouts: rank 0 alone; DCP: each rank its ``__R_0.distcp``, rank 0 the
  ``.metadata``), uploads the files it wrote itself, and deletes its staging folder;
- once every rank has uploaded (a barrier), rank 0 uploads ``trainer_state.json`` last: it is
  the completion marker, so a folder without it is never resumed from;
- rank 0 then applies the retention policy (newest K plus the best) on the URI;
- a resume (or a roll-back) downloads the latest complete checkpoint once per node into
  scratch and loads it from there, on whichever nodes the workers now run.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from llm import storage
from llm.train.checkpoint.layout import STATE_FILE, STEP_DIR, step_dir
from llm.train.checkpoint.retention import (
    BEST_FILE,
    Retention,
    best_checkpoint,
    complete_checkpoints,
)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def scratch_of(uri: str) -> Path:
    """This node's scratch folder for the checkpoints at uri (staging and downloads)."""
    return storage.scratch("checkpoints", _digest(uri.rstrip("/").encode()))


def complete_uris(root: str) -> list[tuple[int, str]]:
    """(step, URI) of every complete step_N checkpoint under root, oldest first."""
    if not storage.is_remote(root):
        local = root.removeprefix("file://")
        return [(step, str(path)) for step, path in complete_checkpoints(local)]
    base = root.rstrip("/")
    found = []
    for entry in storage.list_files(base):
        parts = entry.uri[len(base) + 1 :].split("/")
        # the marker at the folder's top level, written last: the folder is complete
        if len(parts) == 2 and parts[1] == STATE_FILE and (m := STEP_DIR.fullmatch(parts[0])):
            found.append((int(m.group(1)), storage.join(base, parts[0])))
    return sorted(found)


def latest_uri(root: str) -> str | None:
    """The complete checkpoint with the highest step under root, or None."""
    found = complete_uris(root)
    return found[-1][1] if found else None


def best_of(root: str) -> dict[str, Any] | None:
    """root's best.json ({"step", "val_loss", "path"}) when a validated checkpoint was kept."""
    if not storage.is_remote(root):
        return best_checkpoint(root.removeprefix("file://"))
    uri = storage.join(root, BEST_FILE)
    return storage.read_json(uri) if storage.is_file(uri) else None


def fetch(uri: str) -> Path:
    """The checkpoint (or any model) folder uri as a local folder: itself when local, else
    downloaded once per node into scratch, keyed by its marker (or, for a folder without one,
    its listing), so a rewritten checkpoint is downloaded again."""
    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://"))
    parent, name = uri.rstrip("/").rsplit("/", 1)
    marker = storage.join(uri, STATE_FILE)
    if storage.is_file(marker):
        key = storage.read_bytes(marker)
    else:
        key = repr([(e.uri, e.size) for e in storage.list_files(uri)]).encode()
    cache = scratch_of(parent) / "downloaded"
    local = cache / f"{name}-{_digest(key)}"
    if not local.exists():
        print(f"fetching checkpoint {uri} into {local}", flush=True)
    storage.cache(uri, local)
    with storage.node_lock(cache):
        # earlier downloads of this run are superseded: keep only the one just fetched
        for other in cache.iterdir():
            if other.is_dir() and other != local and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
    return local


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Checkpoints:
    """One rank's view of a run's checkpoint root (a path or URI)."""

    def __init__(self, uri: str, *, rank: int, retention: Retention) -> None:
        self.uri = uri.rstrip("/")
        self.remote = storage.is_remote(uri)
        self.rank, self.retention = rank, retention
        # where the writers write: the root itself, or this rank's own staging folder (two
        # ranks of one node must not upload each other's files)
        if self.remote:
            self.root = scratch_of(self.uri) / "staging" / f"rank{rank}"
            shutil.rmtree(self.root, ignore_errors=True)  # what an earlier attempt left staged
            self.root.mkdir(parents=True)
        else:
            self.root = Path(self.uri.removeprefix("file://"))

    def location(self, step: int) -> str:
        """The path or URI of step's checkpoint."""
        name = step_dir(self.root, step).name
        return storage.join(self.uri, name) if self.remote else str(step_dir(self.root, step))

    def latest_location(self) -> str | None:
        """The path or URI of the latest complete checkpoint (as a result names it)."""
        return latest_uri(self.uri)

    def latest(self) -> Path | None:
        """The latest complete checkpoint as a local folder (collective: rank 0 picks it, so
        every rank loads the same one)."""
        choice = [latest_uri(self.uri) if self.rank == 0 else None]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        return None if choice[0] is None else fetch(choice[0])

    def commit(self, step: int, best: dict[str, Any] | None) -> None:
        """After every rank wrote its part of step's checkpoint under ``root``: make it durable
        at the URI and apply retention (collective)."""
        if not self.remote:
            if self.rank == 0:
                self.retention.after_save(self.root, step, best)
            return
        folder, target = step_dir(self.root, step), self.location(step)
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                relative = path.relative_to(folder).as_posix()
                if relative != STATE_FILE:
                    storage.upload(path, storage.join(target, relative))
        _barrier()  # every rank's files are there: only now may the marker say so
        if self.rank == 0:
            storage.upload(folder / STATE_FILE, storage.join(target, STATE_FILE))
            self._retain(step, best)
        shutil.rmtree(folder, ignore_errors=True)

    def _retain(self, step: int, best: dict[str, Any] | None) -> None:
        """Retention.after_save's policy on the URI: best.json, then the newest K plus best."""
        if best is not None and best["step"] == step:
            entry = {"step": step, "val_loss": best["val_loss"], "path": step_dir("", step).name}
            storage.write_json(storage.join(self.uri, BEST_FILE), entry)
        if self.retention.keep_last is None:
            return
        found = complete_uris(self.uri)
        keep = {s for s, _ in found[-self.retention.keep_last :]}
        keep |= {best["step"]} if best is not None else set()
        for s, uri in found:
            if s not in keep:
                # the marker first: a deletion cut short leaves an incomplete folder, never a
                # "complete" one with files missing
                storage.delete(storage.join(uri, STATE_FILE))
                storage.delete(uri)

"""What the training-like jobs (train, finetune, tune, evaluate) read and write, on a local path
or object storage alike.

Driver side: check the token shards and the output before any worker starts. Worker side:
the token shards as a local folder to memory-map (a local folder in place; from object storage,
a per-node cache in scratch, downloaded and checked against the manifest once per node), and
the Ray nodes a job's ranks ran on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from llm import storage
from llm.model.config import ModelConfig
from llm.tokenizer.shards import MANIFEST_FILE, SPLITS, read_manifest
from ray_jobs.cluster import node_id
from ray_jobs.entrypoint import JobError


@dataclasses.dataclass(frozen=True)
class Shards:
    """A token-shard folder (path or URI), its manifest and the manifest's digest."""

    uri: str
    manifest: dict[str, Any]
    digest: str


def open_output(output: str) -> str:
    """The output path or URI, writable: a missing bucket, refused credentials or an endpoint
    that does not answer fail here, before any worker starts."""
    storage.check_access(output, write=True)
    if storage.is_remote(output):
        return output
    # absolute: the workers do not run in the driver's working directory
    folder = Path(output.removeprefix("file://")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _remote_manifest(data: str) -> tuple[dict[str, Any], bytes]:
    """The manifest at data, schema-checked, and every file it names there at its size; the
    hashes are checked by each node once it has the files (reading them all here would
    download the whole data set to the driver)."""
    raw = storage.read_bytes(storage.join(data, MANIFEST_FILE))
    # read_manifest checks the schema; it reads a folder, so give it the manifest alone
    folder = storage.scratch("manifests", hashlib.sha256(raw).hexdigest()[:16])
    (folder / MANIFEST_FILE).write_bytes(raw)
    manifest = read_manifest(folder, verify=False)
    sizes = {e.uri.rsplit("/", 1)[1]: e.size for e in storage.list_files(data)}
    itemsize = np.dtype(manifest["dtype"]).itemsize
    expected = {manifest["tokenizer"]["file"]: None} | {
        s["file"]: int(s["tokens"]) * itemsize
        for split in SPLITS
        for s in manifest["splits"][split]["shards"]
    }
    for name, size in expected.items():
        if name not in sizes:
            raise FileNotFoundError(f"shard file not found: {storage.join(data, name)}")
        if size is not None and sizes[name] != size:
            raise ValueError(f"shard {name}: size mismatch (manifest {size} bytes, {sizes[name]})")
    return manifest, raw


def open_shards(data: str) -> Shards:
    """The token shards at data (a local folder, fully verified, or a URI), checked before any
    worker starts."""
    try:
        if storage.is_remote(data):
            manifest, raw = _remote_manifest(data)
        else:
            folder = Path(data.removeprefix("file://")).resolve()
            manifest = read_manifest(folder, verify=True)
            raw = (folder / MANIFEST_FILE).read_bytes()
            data = str(folder)
    except FileNotFoundError as e:
        raise JobError(f"token shards not readable: {e}") from e
    return Shards(data, manifest, hashlib.sha256(raw).hexdigest()[:16])


def shards_cache(digest: str) -> Path:
    """This node's scratch folder for the token shards whose manifest has this digest."""
    return storage.scratch("shards") / digest


def local_shards(shards: Shards) -> tuple[Path, bool]:
    """(a local folder of the shards to memory-map, whether its hashes were checked already).

    A local folder is used in place (the trainer verifies it as before). From object storage
    the first process of each node downloads the folder into scratch and checks every file
    against the manifest's sha256; the node's other processes wait for it and reuse it."""
    if not storage.is_remote(shards.uri):
        return Path(shards.uri), False

    def verify(folder: Path) -> None:
        read_manifest(folder, verify=True)

    return storage.cache(shards.uri, shards_cache(shards.digest), verify), True


def model_on_shards(model: ModelConfig, manifest: dict[str, Any]) -> ModelConfig:
    """The spec's model on the token shards' vocabulary (a spec leaves vocab_size unset)."""
    vocab_size = int(manifest["vocab_size"])
    if model.vocab_size is not None and model.vocab_size != vocab_size:
        raise JobError(
            f"model.vocab_size {model.vocab_size} does not match the token shards' tokenizer "
            f"({vocab_size}); leave vocab_size out to take the tokenizer's"
        )
    return dataclasses.replace(model, vocab_size=vocab_size)


def rank_nodes() -> list[str]:
    """The Ray node id of every rank, in rank order (collective when distributed)."""
    mine = node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, mine)
    return [str(n) for n in nodes]


def local_file(uri: str) -> Path:
    """The file at uri as a local path: itself, or a copy in this node's scratch named by its
    content (a tokenizer, an instruction file: small enough to read whole)."""
    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://")).resolve()
    data = storage.read_bytes(uri)
    local = storage.scratch("files", hashlib.sha256(data).hexdigest()[:16]) / uri.rsplit("/", 1)[1]
    if not local.is_file():
        storage.write_bytes(str(local), data)
    return local

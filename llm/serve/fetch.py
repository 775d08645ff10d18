"""A registered model's folder and tokenizer as local files, wherever they are stored: a local
path is used in place; on object storage the latest checkpoint (or the model folder) is fetched
once per node into scratch (``llm.train.checkpoint.location.fetch``), and a tokenizer.json kept
elsewhere is downloaded beside it. The control plane's in-process engines and the Ray Serve
replicas of a deployed model (which share no disk with the control plane) both load this way.

torch loads only when a remote checkpoint is fetched, not with this module.
"""

from __future__ import annotations

from pathlib import Path

from llm import storage

TOKENIZER_FILE = "tokenizer.json"


def local_model(uri: str) -> Path:
    """The model folder as a local folder: itself, or its latest checkpoint fetched."""
    from llm.train.checkpoint.location import fetch, latest_uri

    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://"))
    if storage.is_file(storage.join(uri, "config.json")):
        return fetch(uri)
    latest = latest_uri(storage.join(uri, "checkpoints")) or latest_uri(uri)
    if latest is None:
        raise ValueError(f"no model or checkpoint found at {uri}")
    return fetch(latest)


def local_tokenizer(uri: str, folder: Path) -> Path:
    """A tokenizer.json at uri as a local file (downloaded beside the model's folder)."""
    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://"))
    return storage.download(uri, folder.parent / f"{folder.name}.{TOKENIZER_FILE}")

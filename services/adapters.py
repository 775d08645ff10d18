"""Where the control plane is told a LoRA adapter's base, it checks the adapter was made on it.

An adapter loads onto the base it was trained on only: its ``adapter_config.json`` names that
checkpoint (and fingerprints its weights, which ``llm.train.checkpoint.load_adapted`` checks
when the two are loaded). Here the cheap half of that check, on the URIs: the checkpoint the
adapter names must be the base model's folder or lie inside it (a train output's
``checkpoints/step_N``). The weights are not read: they may be gigabytes away on object storage.
"""

from __future__ import annotations

import posixpath

from llm import storage

# llm.train.checkpoint.layout's name; that package imports torch, which the API does not load
ADAPTER_CONFIG_FILE = "adapter_config.json"


def adapter_config_uri(uri: str) -> str:
    """The adapter_config.json of the adapter at uri: an adapter folder, or a finetune output
    (its latest adapter checkpoint)."""
    own = storage.join(uri, ADAPTER_CONFIG_FILE)
    if storage.is_file(own):
        return own
    if not storage.is_dir(uri):
        raise ValueError(f"{uri} holds no LoRA adapter: no such folder")
    # checkpoints/step_00000012: the zero-padded step names sort in step order
    found = sorted(
        e.uri for e in storage.list_files(uri) if e.uri.endswith(f"/{ADAPTER_CONFIG_FILE}")
    )
    if not found:
        raise ValueError(f"{uri} holds no LoRA adapter ({ADAPTER_CONFIG_FILE})")
    return found[-1]


def _plain(uri: str) -> str:
    uri = uri.removeprefix("file://")
    return uri.rstrip("/") if storage.is_remote(uri) else posixpath.normpath(uri)


def check_adapter_base(adapter: str, base: str) -> None:
    """Refuse (ValueError) an adapter at ``adapter`` whose base checkpoint is not ``base``
    (a model folder or checkpoint, path or URI) or a checkpoint inside it."""
    config_uri = adapter_config_uri(adapter)
    try:
        named = storage.read_json(config_uri)["base_checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_uri} names no base checkpoint: {e}") from e
    if not isinstance(named, str) or not named:
        raise ValueError(f"{config_uri} names no base checkpoint")
    theirs, ours = _plain(named), _plain(base)
    if theirs != ours and not theirs.startswith(ours.rstrip("/") + "/"):
        raise ValueError(
            f"the adapter {adapter} was trained on the base {named}, not on {base}: register "
            "it with its own base as parent"
        )

"""Token shards: flat binary token files plus a manifest.json that describes and checksums them.

Layout of a shard folder::

    manifest.json      format, tokenizer hash, vocab size, dtype, EOS id, splits with shards
    tokenizer.json     the Hugging Face tokenizer that produced the tokens
    train-0000.bin     documents' token ids joined by EOS, raw little-endian uint16/uint32

Each shard holds the documents of one source (its entry's ``source``: a curated document's
``source`` tag, or the name of a tokenize input), so training can mix sources by weight; each
split lists its sources' token and document counts. A shard entry without a source (a manifest
written before sources were recorded) belongs to DEFAULT_SOURCE.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from llm import storage

if TYPE_CHECKING:  # the control plane reads manifests without the tokenizer library
    import tokenizers

FORMAT = "llmforge.tokens/1"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
_DTYPES = ("uint16", "uint32")
_SHARD_KEYS = ("file", "tokens", "documents", "sha256")
SOURCE_KEY = "source"
DEFAULT_SOURCE = "default"


def split_of(doc_id: str, val_fraction: float) -> str:
    """Assign a document to "train" or "val" from a hash of its id alone, so adding data
    never moves an existing document between splits."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    # Integer-vs-float comparison is exact in Python, so fraction 1.0 puts every doc in val.
    return "val" if int.from_bytes(digest, "big") < val_fraction * 2.0**64 else "train"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def encode_documents(
    tok: tokenizers.Tokenizer, texts: list[str], eos: int, dtype: np.dtype | str
) -> np.ndarray:
    """Token ids of every document, each followed by EOS, as one flat array."""
    dtype = np.dtype(dtype)
    pieces = []
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
        pieces.append(np.asarray([eos], dtype=dtype))
    if not pieces:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(pieces)


def write_shard(directory: str | os.PathLike[str], name: str, tokens: np.ndarray) -> dict:
    """Write one shard (whole-object) into the folder or URI ``directory``; the caller adds
    "documents" to the returned entry."""
    if tokens.ndim != 1 or tokens.dtype.name not in _DTYPES:
        raise ValueError(
            f"shard {name}: tokens must be a 1-D uint16/uint32 array, "
            f"got shape {tokens.shape} dtype {tokens.dtype}"
        )
    data = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<")).tobytes()
    storage.write_bytes(storage.join(os.fspath(directory), name), data)
    return {"file": name, "tokens": int(tokens.size), "sha256": hashlib.sha256(data).hexdigest()}


def shard_source(entry: dict) -> str:
    """The source whose documents a shard entry holds."""
    return str(entry.get(SOURCE_KEY, DEFAULT_SOURCE))


def source_counts(shards: list[dict]) -> dict[str, dict[str, int]]:
    """Tokens and documents per source of a split's shard entries, sources in name order."""
    counts: dict[str, dict[str, int]] = {}
    for shard in shards:
        entry = counts.setdefault(shard_source(shard), {"tokens": 0, "documents": 0})
        entry["tokens"] += int(shard["tokens"])
        entry["documents"] += int(shard["documents"])
    return dict(sorted(counts.items()))


def _split_entry(shards: list[dict]) -> dict:
    ordered = sorted(shards, key=lambda s: s["file"])
    for shard in ordered:
        missing = [k for k in _SHARD_KEYS if k not in shard]
        if missing:
            raise ValueError(f"shard {shard.get('file', '?')}: entry lacks {missing}")
    keys = (*_SHARD_KEYS, SOURCE_KEY)
    return {
        "tokens": sum(int(s["tokens"]) for s in ordered),
        "documents": sum(int(s["documents"]) for s in ordered),
        "sources": source_counts(ordered),
        "shards": [{k: s[k] for k in keys if k in s} for s in ordered],
    }


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    tokenizer_file: str,
    vocab_size: int,
    dtype: np.dtype | str,
    eos_id: int,
    shards: dict[str, list[dict]],
    extra: dict | None = None,
) -> dict:
    """Write manifest.json (whole-object) into the folder or URI ``directory``, after its shards
    and tokenizer, and return it; splits absent from `shards` are empty."""
    directory = os.fspath(directory)
    unknown = sorted(set(shards) - set(SPLITS))
    if unknown:
        raise ValueError(f"{storage.join(directory, MANIFEST_FILE)}: unknown splits {unknown}")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "tokenizer": {
            "file": tokenizer_file,
            "sha256": storage.sha256(storage.join(directory, tokenizer_file)),
        },
        "vocab_size": int(vocab_size),
        "dtype": np.dtype(dtype).name,
        "eos_id": int(eos_id),
        "splits": {split: _split_entry(shards.get(split, [])) for split in SPLITS},
        **(extra or {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    storage.write_bytes(storage.join(directory, MANIFEST_FILE), text.encode("utf-8"))
    return manifest


def _validate_schema(manifest: Any, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{where}: format is {found!r}, expected {FORMAT!r}")
    for key in ("tokenizer", "vocab_size", "dtype", "eos_id", "splits"):
        if key not in manifest:
            raise ValueError(f"{where}: missing key {key!r}")
    if manifest["dtype"] not in _DTYPES:
        raise ValueError(f"{where}: dtype {manifest['dtype']!r} is not one of {_DTYPES}")
    if not isinstance(manifest["vocab_size"], int) or manifest["vocab_size"] <= 0:
        raise ValueError(f"{where}: vocab_size must be a positive int")
    if manifest["vocab_size"] > np.iinfo(manifest["dtype"]).max + 1:
        raise ValueError(
            f"{where}: dtype {manifest['dtype']} cannot hold vocab_size {manifest['vocab_size']}"
        )
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        if entry is None or "shards" not in entry:
            raise ValueError(f"{where}: split {split!r} missing or has no shard list")
        for shard in entry["shards"]:
            missing = [k for k in _SHARD_KEYS if k not in shard]
            if missing:
                raise ValueError(f"{where}: shard {shard.get('file', '?')} lacks {missing}")
            source = shard.get(SOURCE_KEY, DEFAULT_SOURCE)
            if not isinstance(source, str) or not source:
                raise ValueError(f"{where}: shard {shard['file']} has source {source!r}")


def _verify_files(directory: str, manifest: dict) -> None:
    # Sizes from one listing, then every file's hash streamed: ranged reads on object storage.
    sizes = {e.uri: e.size for e in storage.list_files(directory)}
    tok_path = storage.join(directory, manifest["tokenizer"]["file"])
    if tok_path not in sizes:
        raise FileNotFoundError(f"tokenizer file not found: {tok_path}")
    actual = storage.sha256(tok_path)
    if actual != manifest["tokenizer"]["sha256"]:
        raise ValueError(
            f"tokenizer {manifest['tokenizer']['file']}: sha256 mismatch "
            f"(manifest {manifest['tokenizer']['sha256']}, file {actual})"
        )
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            path = storage.join(directory, shard["file"])
            if path not in sizes:
                raise FileNotFoundError(f"shard file not found: {path}")
            expected_size = int(shard["tokens"]) * itemsize
            size = sizes[path]
            if size != expected_size:
                raise ValueError(
                    f"shard {shard['file']}: size mismatch (manifest {shard['tokens']} tokens "
                    f"= {expected_size} bytes, file {size} bytes)"
                )
            actual = storage.sha256(path)
            if actual != shard["sha256"]:
                raise ValueError(
                    f"shard {shard['file']}: sha256 mismatch "
                    f"(manifest {shard['sha256']}, file {actual})"
                )


def read_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> dict:
    """Load and validate manifest.json of a folder or URI (``s3://``); with `verify`, also check
    every file's size and hash."""
    directory = storage.resolve(os.fspath(directory))
    path = storage.join(directory, MANIFEST_FILE)
    try:
        text = storage.read_text(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"manifest not found: {path}") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    _validate_schema(manifest, path)
    if verify:
        _verify_files(directory, manifest)
    return manifest

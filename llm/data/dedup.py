"""Exact deduplication: hash normalised text, then keep one document per hash.

The hash is computed per batch (``add_text_hash``); the caller groups rows by ``text_hash`` across
the whole corpus and hands each group to ``mark_exact_duplicates``.
"""

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import pyarrow as pa

from llm.data.block import CorpusBlock
from llm.data.schema import ID, POSITION, REASON, TEXT, kept_mask, set_column

TEXT_HASH = "text_hash"
DUPLICATE_OF = "duplicate_of"
EXACT_DUPLICATE = "exact_duplicate"

_WHITESPACE_RE = re.compile(r"\s+")
_POSITION_RE = re.compile(r"^(.*):(\d+)$")


@dataclass(frozen=True)
class ExactDedupParams:
    """Exact dedup on a hash of the normalised text, across the whole corpus."""


class ExactDedup(CorpusBlock):
    """Keeps one document of each normalised text (see ``mark_exact_duplicates``)."""

    kind = "exact_dedup"
    Params = ExactDedupParams
    corpus_reason = EXACT_DUPLICATE


def normalize_for_hash(text: str) -> str:
    """NFC, lowercase, whitespace runs collapsed to one space, ends stripped."""
    return _WHITESPACE_RE.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def text_hash(text: str) -> str:
    """A 16-byte blake2b hex digest of the normalised text, stable across processes."""
    normalized = normalize_for_hash(text).encode("utf-8")
    return hashlib.blake2b(normalized, digest_size=16).hexdigest()


def add_text_hash(batch: pa.Table) -> pa.Table:
    """Add (or replace) the ``text_hash`` column; null on rows already removed."""
    texts = batch.column(TEXT).to_pylist()
    hashes = [
        text_hash(text) if keep else None
        for text, keep in zip(texts, kept_mask(batch), strict=True)
    ]
    return set_column(batch, TEXT_HASH, pa.array(hashes, type=pa.string()))


def _keep_order(position: str, doc_id: str) -> tuple[str, int, str, str]:
    # "f.jsonl:9" must sort before "f.jsonl:10", so the earliest line of a file is the one kept.
    match = _POSITION_RE.match(position)
    if match:
        return match.group(1), int(match.group(2)), position, doc_id
    return position, -1, position, doc_id


def mark_exact_duplicates(group: pa.Table) -> pa.Table:
    """Keep one kept row per ``text_hash`` and mark the others as duplicates of it.

    The kept row is the one with the smallest (position, id), so the choice does not depend on row
    order. Removed rows get ``reason="exact_duplicate"`` and ``duplicate_of`` = the kept id; rows
    removed earlier are left as they were.
    """
    kept = kept_mask(group)
    hashes = group.column(TEXT_HASH).to_pylist()
    keys = [
        _keep_order(position, doc_id)
        for position, doc_id in zip(
            group.column(POSITION).to_pylist(), group.column(ID).to_pylist(), strict=True
        )
    ]
    winner: dict[str, int] = {}
    for row, (digest, keep) in enumerate(zip(hashes, kept, strict=True)):
        if not keep or digest is None:
            continue
        if digest not in winner or keys[row] < keys[winner[digest]]:
            winner[digest] = row
    reasons = group.column(REASON).to_pylist()
    duplicate_of = _existing_duplicate_of(group)
    for row, (digest, keep) in enumerate(zip(hashes, kept, strict=True)):
        if keep and digest is not None and winner[digest] != row:
            reasons[row] = EXACT_DUPLICATE
            duplicate_of[row] = keys[winner[digest]][3]
    group = set_column(group, REASON, pa.array(reasons, type=pa.string()))
    return set_column(group, DUPLICATE_OF, pa.array(duplicate_of, type=pa.string()))


def _existing_duplicate_of(group: pa.Table) -> list[str | None]:
    if DUPLICATE_OF in group.column_names:
        return group.column(DUPLICATE_OF).to_pylist()
    return [None] * group.num_rows

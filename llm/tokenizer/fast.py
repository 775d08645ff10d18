"""A tiktoken encoder built from a Hugging Face byte-level BPE tokenizer.json, id for id.

tiktoken encodes the same byte-level BPE several times faster than `tokenizers`, but it merges
differently: it repeatedly joins the adjacent pair whose *concatenation* has the lowest rank,
where HF applies the pair listed earliest in `merges`. The two agree when each merged token's
id grows with its merge's position and every multi-byte token comes from exactly one merge,
which is how HF's BpeTrainer builds a vocabulary. `build_encoding` checks that, and every other
setting that would make the outputs differ, and raises `NotExact` (naming the file) otherwise;
the tests compare ids against `tokenizers` on real corpora.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
import tokenizers

from llm.tokenizer.bpe import PRETOKENIZER_PATTERNS, eos_id, load_tokenizer
from llm.tokenizer.shards import encode_documents

Encoder = Callable[[list[str]], np.ndarray]


class NotExact(ValueError):
    """The tokenizer uses a feature tiktoken cannot reproduce exactly."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which ByteLevel uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _byte_level(config: Any) -> bool:
    return isinstance(config, dict) and config.get("type") == "ByteLevel"


def _pattern(pre: Any) -> str:
    """The split regex of a pre-tokenizer that `train_bpe` writes (or plain GPT-2 ByteLevel)."""
    if _byte_level(pre) and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return PRETOKENIZER_PATTERNS["gpt2"]
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) else []
    if pre and pre.get("type") == "Sequence" and len(steps) == 2:
        split, level = steps
        regex = split.get("pattern", {}).get("Regex")
        if (
            split.get("type") == "Split"
            and regex in PRETOKENIZER_PATTERNS.values()
            and split.get("behavior") == "Isolated"
            and not split.get("invert")
            and _byte_level(level)
            and not level.get("use_regex", True)
            and not level.get("add_prefix_space")
        ):
            return str(regex)
    raise NotExact(f"pre-tokenizer {json.dumps(pre)[:200]} is not a known byte-level split")


def _check_model(model: dict[str, Any], config: dict[str, Any]) -> None:
    if model.get("type") != "BPE":
        raise NotExact(f"model type is {model.get('type')!r}, not BPE")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise NotExact(f"BPE option {key}={model[key]!r} is not supported")
    if model.get("byte_fallback"):
        raise NotExact("BPE byte_fallback is not supported")
    if config.get("normalizer") is not None:
        raise NotExact("a normalizer is not supported")
    for added in config.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise NotExact(f"added token {added['content']!r} strips or matches whole words")


def _token_bytes(token: str) -> bytes:
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError as exc:
        raise NotExact(f"token {token!r} is not byte-level text") from exc


def _mergeable_ranks(model: dict[str, Any], specials: dict[str, int]) -> dict[bytes, int]:
    """Each token's bytes -> its HF id, after checking that ids follow merge order."""
    vocab: dict[str, int] = {t: i for t, i in model["vocab"].items() if t not in specials}
    ranks = {_token_bytes(t): i for t, i in vocab.items()}
    if len(ranks) != len(vocab):
        raise NotExact("two vocabulary entries decode to the same bytes")
    if not all(bytes([b]) in ranks for b in range(256)):
        raise NotExact("the vocabulary lacks some of the 256 single bytes")
    merged_ids = []
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merged_ids.append(vocab.get(left + right, -1))
    if -1 in merged_ids or len(set(merged_ids)) != len(merged_ids):
        raise NotExact("a merge's result is missing from the vocabulary or made by two merges")
    if any(a >= b for a, b in itertools.pairwise(merged_ids)):
        raise NotExact("token ids do not follow merge order, so ranks would differ")
    if len(merged_ids) + 256 != len(ranks):
        raise NotExact("some multi-byte tokens are not the result of any merge")
    return ranks


def build_encoding(path: str | os.PathLike[str]) -> tiktoken.Encoding:
    """A tiktoken Encoding whose ids equal the HF tokenizer's at `path`; NotExact otherwise."""
    path = Path(path)
    load_tokenizer(path)  # the same not-found error as everywhere else
    config = json.loads(path.read_text(encoding="utf-8"))
    try:
        _check_model(config["model"], config)
        specials = {a["content"]: int(a["id"]) for a in config.get("added_tokens", [])}
        return tiktoken.Encoding(
            f"llmforge-{path.name}",
            pat_str=_pattern(config.get("pre_tokenizer")),
            mergeable_ranks=_mergeable_ranks(config["model"], specials),
            special_tokens=specials,
        )
    except NotExact as exc:
        raise NotExact(f"{path}: fast path is not exact: {exc}") from exc


def _joinable(specials: set[str], eos_text: str) -> bool:
    """Whether documents joined with `eos_text` encode as if each were encoded alone: no other
    special token can start inside the separator and run on, or start in a document and run
    into it, and none starts with or contains it (so the separator always matches as itself)."""
    for other in specials - {eos_text}:
        if eos_text in other:
            return False
        for k in range(1, len(eos_text)):
            if other.startswith(eos_text[k:]) or other.endswith(eos_text[:k]):
                return False
    return True


def fast_encode_documents(
    enc: tiktoken.Encoding, texts: list[str], eos: int, dtype: np.dtype | str
) -> np.ndarray:
    """`encode_documents` with tiktoken: each document's ids followed by EOS, one flat array.

    Special-token strings inside a document become their ids, as `tokenizers` does. The batch
    is encoded in one call, the documents joined with the EOS string: tiktoken encodes the text
    between special tokens piece by piece, so each document is encoded exactly as alone, and
    the ids come back as one numpy buffer rather than a Python list per document. One thread
    (not tiktoken's threaded encode_batch), so a worker uses one core.
    """
    dtype = np.dtype(dtype)
    if not texts:
        return np.zeros(0, dtype=dtype)
    specials = enc.special_tokens_set
    eos_text = next((s for s in specials if enc.encode_single_token(s) == eos), None)
    if eos_text is not None and _joinable(set(specials), eos_text):
        joined = eos_text.join(texts) + eos_text
        return enc.encode_to_numpy(joined, allowed_special="all").astype(dtype)
    pieces = []
    for text in texts:
        has_special = any(s in text for s in specials)
        ids = enc.encode(text, allowed_special="all") if has_special else enc.encode_ordinary(text)
        pieces.append(np.asarray(ids, dtype=dtype))
        pieces.append(np.asarray([eos], dtype=dtype))
    return np.concatenate(pieces)


def document_encoder(
    path: str | os.PathLike[str],
    dtype: np.dtype | str,
    check_texts: Sequence[str] = (),
    *,
    allow_fast: bool = True,
) -> tuple[Encoder, str]:
    """The fastest exact encoder for the tokenizer at `path`, and which one it is.

    `check_texts` are encoded both ways first; any difference means falling back to
    `tokenizers`, a cheap guard against a vocabulary the static checks did not foresee.
    `allow_fast=False` forces `tokenizers` (workers follow the driver's decision).
    """
    tok: tokenizers.Tokenizer = load_tokenizer(path)
    eos = eos_id(tok)

    def slow(texts: list[str]) -> np.ndarray:
        return encode_documents(tok, texts, eos, dtype)

    if not allow_fast:
        return slow, "tokenizers"
    try:
        enc = build_encoding(path)
    except NotExact as exc:
        return slow, f"tokenizers ({exc})"

    def fast(texts: list[str]) -> np.ndarray:
        return fast_encode_documents(enc, texts, eos, dtype)

    checks = list(check_texts)
    if checks and not np.array_equal(fast(checks), slow(checks)):
        return slow, f"tokenizers ({path}: tiktoken ids differ on the check texts)"
    return fast, "tiktoken"

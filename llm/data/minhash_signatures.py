"""MinHash signatures for a whole batch at once, with numpy instead of a datasketch call per text.

The values are exactly datasketch's (``MinHash(num_perm, seed, scheme="affine32")`` fed the same
shingle hashes, folded to 32 bits): each hash is pre-mixed with the MurmurHash3 32-bit finaliser,
then permuted as ``a * h + b`` mod 2^32 with datasketch's own ``a`` and ``b``, and the minimum
taken per document.

What is batched, per chunk of about a megabyte of text: the texts go into one UTF-8 buffer
(lowercased and NFC-normalised first where not ASCII), where ``bytes.translate`` turns ASCII
separators into spaces and numpy the others; word boundaries are found and every word hashed
with numpy over that buffer, with no Python object per word; the shingle (word n-gram) hashes
are a polynomial over word hashes (``ngram_hashes``); and the permutations run over blocks of
shingles from many documents. The words are exactly ``normalized_words``'s (tested on every
code point).

The word hash (``_hash_words``) is llmforge's own: an 8-byte-chunk MurmurHash3-finaliser chain
over the word's UTF-8 bytes, seeded with its length. No library hashes many variable-length
slices of one buffer without a Python call per slice (``xxhash`` and ``hashlib`` take one string
per call), and that call per word was most of the time. It is stable across processes and
machines (fixed constants, little-endian by definition), as Ray workers need.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator
from functools import cache

import numpy as np
import regex

from llm.data.ngrams import ngram_hashes, normalized_words

SCHEME = "affine32"  # pinned so signatures stay comparable across datasketch versions
EMPTY = np.iinfo(np.uint32).max  # datasketch's value for a MinHash that saw nothing
# Permutations are applied to blocks of 8k shingles × 32 permutations: 1 MB stays in cache, and
# ran 30% faster than 16k × 128 (8 MB).
_BLOCK_ROWS = 1 << 13
_BLOCK_PERMS = 32
# Texts are shingled about this many characters at a time: the word and shingle arrays of a
# chunk stay in cache, where a whole batch's (tens of MB each) ran 30% slower.
_CHUNK_CHARS = 1 << 20
_SPACE = ord(" ")
_LENGTH_SEED = np.uint64(0x9E3779B97F4A7C15)
_LOW_32 = np.uint64(0xFFFFFFFF)


def _ascii_table() -> bytes:
    """``bytes.translate`` table that does to an ASCII text what ``normalized_words`` does.

    Derived from ``normalized_words`` itself, character by character (NFC leaves ASCII alone and
    lowercasing maps each ASCII character to one), so the two cannot drift apart: separators
    (whitespace and punctuation) become a space, letters their lower case.
    """
    table = bytearray(range(256))
    for code in range(128):
        words = normalized_words(f"a{chr(code)}a")
        table[code] = _SPACE if words == ["a", "a"] else ord(words[0][1])
    return bytes(table)


_ASCII_TABLE = _ascii_table()


def normalized_bytes(text: str) -> bytes:
    """``text`` NFC-normalised and lowercased as UTF-8, ASCII separators made spaces.

    Separators beyond ASCII are left for ``_blank_wide_separators``, which finds them in the
    whole batch at once: a regex substitution per text cost as much as everything else.
    """
    if not text.isascii():  # O(1) in CPython: the string knows it
        text = unicodedata.normalize("NFC", text).lower()
    return text.encode("utf-8", "surrogatepass").translate(_ASCII_TABLE)


def _folded_bytes(text: str) -> bytes:
    """``normalized_bytes`` but for the lower case of non-ASCII characters.

    Equal to it unless ``text`` holds a character ``_cased_wide_keys`` lists. ``str.lower`` on a
    text that is not all ASCII took most of the normalising time (a full Unicode case mapping of
    every character), and in most such texts (English with curly quotes or dashes) it changes
    only the ASCII letters, which the translation table lowercases anyway.
    """
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.encode("utf-8", "surrogatepass").translate(_ASCII_TABLE)


def _every_wide_character() -> str:
    return "".join(map(chr, [*range(0x80, 0xD800), *range(0xE000, 0x110000)]))


def _utf8_keys(characters: Iterable[str]) -> np.ndarray:
    """Each character's UTF-8 bytes as a big-endian integer, sorted (a table for ``_wide_keys``)."""
    return np.array(sorted(int.from_bytes(c.encode(), "big") for c in characters), np.uint32)


@cache
def _wide_separator_keys() -> np.ndarray:
    """The keys of every non-ASCII separator: each character ``normalized_words`` splits at,
    punctuation (its ``\\p{P}``) or whitespace (``str.split``'s)."""
    every = _every_wide_character()
    return _utf8_keys(set(regex.findall(r"\p{P}", every)) | set(filter(str.isspace, every)))


@cache
def _cased_wide_keys() -> np.ndarray:
    """The keys of every non-ASCII character that ``str.lower`` changes (an NFC text without
    them lowers to itself but for its ASCII letters: lower case maps character by character,
    final sigma aside, and a capital sigma is in this table)."""
    return _utf8_keys(c for c in _every_wide_character() if c.lower() != c)


def _wide_keys(buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset of the first byte, byte count, key) of every multi-byte character in ``buffer``
    (UTF-8, running at least 3 bytes past its last character)."""
    leads = np.flatnonzero(buffer >= 0xC0)
    sizes = 2 + (buffer[leads] >= 0xE0) + (buffer[leads] >= 0xF0)
    words = np.ndarray((len(buffer) - 3,), dtype=">u4", buffer=buffer, strides=(1,))
    return leads, sizes, words[leads] >> (8 * (4 - sizes)).astype(np.uint32)


def _among(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    found = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return table[found] == keys


def _blank_wide_separators(buffer: np.ndarray) -> None:
    """Overwrite with spaces, in place, the bytes of every non-ASCII separator in ``buffer``.

    ``buffer`` is UTF-8 and runs at least 3 bytes past its last character.
    """
    leads, sizes, keys = _wide_keys(buffer)
    hits = _among(keys, _wide_separator_keys())
    for offset in range(4):
        blank = leads[hits & (sizes > offset)]
        buffer[blank + offset] = _SPACE


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) for these settings, as uint32 arrays."""
    # Imported here: datasketch pulls in scipy (half a second), which everything that reads the
    # curate spec (the control plane, the CLI) would pay for at start-up through the registry.
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(values: np.ndarray) -> np.ndarray:
    # MurmurHash3's 32-bit finaliser, as datasketch applies it before the permutations.
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def _fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: a bijection spreading every bit over the output."""
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xFF51AFD7ED558CCD)
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xC4CEB9FE1A85EC53)
    values ^= values >> np.uint64(33)
    return values


# _KEEP_LOW[k]: the low k bytes of a chunk (k = 8: all of it).
_KEEP_LOW = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
# Longer words (URLs, base64 blobs, minified code: rare) get one blake2b call each: chaining
# would take a numpy round per 8 bytes of the longest word.
_CHAINED_BYTES = 32


def _hash_words(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A uint64 hash of each word ``buffer[start : start + length]`` (uint8).

    Up to ``_CHAINED_BYTES``: h = length × φ, then for each 8-byte chunk c (little-endian,
    zero-padded) h = fmix64(h ^ c). Longer: blake2b's 8-byte digest, little-endian.
    ``buffer`` must run at least 7 bytes past the last word.
    """
    # Every byte offset read as a little-endian uint64: an unaligned view, no copy.
    chunks = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    hashes = lengths.astype(np.uint64) * _LENGTH_SEED
    hashes ^= chunks[starts] & _KEEP_LOW[np.minimum(lengths, 8)]
    _fmix64(hashes)
    longer = np.flatnonzero(lengths > 8)  # only the words that long are indexed from here on
    for offset in range(8, _CHAINED_BYTES, 8):
        longer = longer[lengths[longer] > offset]
        left = np.minimum(lengths[longer] - offset, 8)
        more = chunks[starts[longer] + offset] & _KEEP_LOW[left]
        hashes[longer] = _fmix64(hashes[longer] ^ more)
    for word in np.flatnonzero(lengths > _CHAINED_BYTES).tolist():
        start = int(starts[word])
        word_bytes = buffer[start : start + lengths[word]].tobytes()
        digest = hashlib.blake2b(word_bytes, digest_size=8).digest()
        hashes[word] = int.from_bytes(digest, "little")
    return hashes


def _batch_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word of every text in order, offsets: text t's words are
    ``hashes[offsets[t] : offsets[t + 1]]``)."""
    pieces = [_folded_bytes(text) for text in texts]
    buffer = _joined(pieces)
    text_starts = np.cumsum([0, *map(len, pieces)])[:-1] + np.arange(len(pieces))  # 1 space each
    if buffer.flags.writeable:  # not all ASCII
        leads, _, keys = _wide_keys(buffer)
        cased_at = leads[_among(keys, _cased_wide_keys())]
        cased = np.unique(np.searchsorted(text_starts, cased_at, "right")) - 1
        if len(cased):  # those texts need the full lower case: it may change their lengths
            for text in cased.tolist():
                pieces[text] = normalized_bytes(texts[text])
            buffer = _joined(pieces)
            text_starts = np.cumsum([0, *map(len, pieces)])[:-1] + np.arange(len(pieces))
        _blank_wide_separators(buffer)
    # Edges alternate: the first byte of a word, the space after it (the padding ends the last).
    # Compared as booleans, not differenced as int8: 3× faster, and the nonzero scan is the cost.
    in_word = buffer != _SPACE
    edge = np.empty(len(buffer), dtype=bool)
    edge[0] = in_word[0]
    np.not_equal(in_word[1:], in_word[:-1], out=edge[1:])
    edges = np.flatnonzero(edge)
    starts, ends = edges[0::2], edges[1::2]
    offsets = np.append(np.searchsorted(starts, text_starts), len(starts))
    return _hash_words(buffer, starts, ends - starts), offsets


def _joined(pieces: list[bytes]) -> np.ndarray:
    """The pieces joined by spaces and padded with 8, as uint8; writable (a copy) unless ASCII."""
    data = b" ".join(pieces) + b" " * 8
    buffer = np.frombuffer(data, dtype=np.uint8)
    return buffer if data.isascii() else buffer.copy()


def batch_shingles(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, offsets): text t's shingles are ``hashes[offsets[t] : offsets[t + 1]]``.

    A shingle is a word n-gram of the normalised text; a text of fewer than n words is one
    shingle of all its words, and a text without words has none. Repeats are kept.
    """
    hashes, words = _batch_words(texts)
    counts = np.diff(words)
    grams = ngram_hashes(hashes, n)  # grams[i]: words i .. i + n - 1, across text boundaries
    back = np.arange(1, n)
    tails = words[1:, None] - back  # each text's last n - 1 positions run into the next text
    keep = np.ones(len(grams), dtype=bool)
    keep[tails[(back <= counts[:, None]) & (tails < len(grams))]] = False
    shingles = grams[keep]
    per_text = np.maximum(counts - n + 1, 0)
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        at = (np.cumsum(per_text) - per_text)[short]
        extra = [ngram_hashes(hashes[words[t] : words[t + 1]], int(counts[t])) for t in short]
        shingles = np.insert(shingles, at, np.concatenate(extra))
        per_text[short] = 1
    return shingles, np.concatenate(([0], np.cumsum(per_text)))


def _chunks(texts: list[str]) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of ``texts`` of about ``_CHUNK_CHARS`` characters (at least 1 text)."""
    start, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text)
        if size >= _CHUNK_CHARS:
            yield start, index + 1
            start, size = index + 1, 0
    if start < len(texts):
        yield start, len(texts)


def shingle_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """Each text's distinct shingle hashes, sorted (for exact Jaccard similarity)."""
    sets = []
    for first_text, last_text in _chunks(texts):
        shingles, offsets = batch_shingles(texts[first_text:last_text], n)
        for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            values = np.sort(shingles[start:stop])
            first = np.ones(len(values), dtype=bool)  # the first of each run of equal values
            first[1:] = values[1:] != values[:-1]
            sets.append(values[first])
    return sets


def text_signatures(texts: list[str], num_perm: int, seed: int, n: int) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash values over each text's word n-gram shingles."""
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for start, stop in _chunks(texts):
        shingles, offsets = batch_shingles(texts[start:stop], n)
        out[start:stop] = minhash_matrix(shingles, offsets, num_perm, seed)
    return out


def minhash_matrix(
    shingles: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int
) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash values of the texts ``batch_shingles`` describes."""
    a, b = permutations(num_perm, seed)
    out = np.full((num_perm, len(offsets) - 1), EMPTY, dtype=np.uint32)
    mixed = _fmix32((shingles & _LOW_32).astype(np.uint32))
    permuted = np.empty((_BLOCK_PERMS, min(_BLOCK_ROWS, len(mixed))), dtype=np.uint32)
    texts = np.flatnonzero(np.diff(offsets))  # those with shingles: reduceat needs no empty run
    firsts, lasts = offsets[texts], offsets[texts + 1]
    for start in range(0, len(mixed), _BLOCK_ROWS):
        block = mixed[start : start + _BLOCK_ROWS]
        # The texts with shingles in this block: ending after its start, starting before its end.
        inside = slice(
            np.searchsorted(lasts, start, "right"), np.searchsorted(firsts, start + len(block))
        )
        columns, cuts = texts[inside], np.maximum(firsts[inside] - start, 0)
        for first in range(0, num_perm, _BLOCK_PERMS):
            rows = slice(first, first + _BLOCK_PERMS)
            # Permutations × shingles, so each text's minimum runs along contiguous memory (8×
            # faster than down the columns). Wraps mod 2^32, as datasketch's uint32 arithmetic.
            view = permuted[: len(a[rows]), : len(block)]
            np.multiply(a[rows, None], block[None, :], out=view)
            view += b[rows, None]
            # A text cut by a block boundary gets the minimum of both parts.
            reduced = np.minimum.reduceat(view, cuts, axis=1)
            out[rows, columns] = np.minimum(out[rows, columns], reduced)
    return out.T

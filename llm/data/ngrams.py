"""Word n-gram hashing shared by the repetition rules, MinHash shingling and decontamination.

Each word gets a stable 64-bit hash (blake2b, so equal across processes and machines); an n-gram's
hash is the polynomial ``sum(word_hash[i + k] * M**(n - 1 - k))`` in wrapping uint64 arithmetic,
computed for every position at once with numpy instead of joining n-gram strings. Two different
n-grams are confused only if their 64-bit hashes collide (odds about N²/2⁶⁴ for N n-grams).
"""

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import regex

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication is a bijection mod 2^64


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    # Shared across documents (most words of a document were hashed for an earlier one), and
    # bounded: 2^18 words is a few tens of MB.
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def word_hashes(words: Iterable[str]) -> np.ndarray:
    """A stable uint64 hash per word."""
    return np.fromiter(map(_word_hash, words), dtype=np.uint64)


# Word -> number, shared by every call (numbers are only compared, never stored): a document's
# words are numbered by a lookup in C, and only words new to the table take a Python step.
# Emptied when it outgrows the bound, before numbering a document, never during one.
_WORD_NUMBERS: dict[str, int] = {}
_WORD_NUMBERS_LIMIT = 1 << 21


def local_word_hashes(words: Sequence[str]) -> np.ndarray:
    """Per-word uint64 hashes valid within this call only: cheaper than ``word_hashes``.

    Distinct words get distinct numbers, scrambled with the murmur3 finaliser (a bijection), so
    the polynomial n-gram hash sees well-mixed 64-bit values.
    """
    numbers = _WORD_NUMBERS
    new = set(words).difference(numbers)
    if new:
        if len(numbers) + len(new) > _WORD_NUMBERS_LIMIT:
            numbers.clear()
            new = set(words)
        numbers.update(zip(new, range(len(numbers), len(numbers) + len(new)), strict=True))
    values = np.fromiter(map(numbers.__getitem__, words), np.uint64, count=len(words))
    with np.errstate(over="ignore"):
        values = (values + np.uint64(1)) * _MULTIPLIER
        values ^= values >> np.uint64(33)
        values *= np.uint64(0xFF51AFD7ED558CCD)
        values ^= values >> np.uint64(33)
    return values


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """The hash of the n-gram starting at each position (len(hashes) - n + 1 values, maybe 0)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    result = hashes[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            result = result * _MULTIPLIER + hashes[k : k + count]
    return result


def cumulative_lengths(words: Sequence[str]) -> np.ndarray:
    """Characters in the first k words, for k = 0..len(words) (input to ``ngram_lengths``)."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return np.concatenate(([0], np.cumsum(lengths)))


def ngram_lengths(cumulative: np.ndarray, n: int, separator_chars: int) -> np.ndarray:
    """Characters in each n-gram: its word lengths plus ``separator_chars`` between words."""
    if len(cumulative) - 1 < n:
        return np.empty(0, dtype=np.int64)
    return cumulative[n:] - cumulative[:-n] + separator_chars * (n - 1)


# Every Unicode punctuation mark (category P*), so curly quotes and dashes go too; one regex pass
# in C is twice as fast as str.translate with a table of all of them.
_PUNCTUATION = regex.compile(r"\p{P}")


def normalized_words(text: str) -> list[str]:
    """Lowercased NFC words with punctuation removed, as GPT-3's 13-gram overlap check does."""
    text = unicodedata.normalize("NFC", text).lower()
    return _PUNCTUATION.sub(" ", text).split()


def hash_rows(values: np.ndarray) -> np.ndarray:
    """One polynomial uint64 hash per row of a uint64 array, over its last axis."""
    result = np.zeros(values.shape[:-1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(values.shape[-1]):
            result = result * _MULTIPLIER + values[..., k]
    return result

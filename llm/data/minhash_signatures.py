"""MinHash signatures for a whole batch at once, with numpy instead of a datasketch call per text.

The values are exactly datasketch's (``MinHash(num_perm, seed, scheme="affine32")`` fed the same
shingle hashes, folded to 32 bits): each hash is pre-mixed with the MurmurHash3 32-bit finaliser,
then permuted as ``a * h + b`` mod 2^32 with datasketch's own ``a`` and ``b``, and the minimum
taken per document. What changes is the shape of the work: all words of the batch are hashed
once per distinct word (pyarrow's dictionary encoding finds them), all shingles are hashed in
one polynomial pass, and the permutations run over blocks of shingles from many documents.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa
from datasketch import MinHash

from llm.data.ngrams import ngram_hashes, normalized_words, word_hashes

SCHEME = "affine32"  # pinned so signatures stay comparable across datasketch versions
EMPTY = np.iinfo(np.uint32).max  # datasketch's value for a MinHash that saw nothing
_BLOCK_ROWS = 1 << 14  # shingles per permutation block: 16k × 128 uint32 is 8 MB


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) for these settings, as uint32 arrays."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(values: np.ndarray) -> np.ndarray:
    # MurmurHash3's 32-bit finaliser, as datasketch applies it before the permutations.
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def _word_hashes(words: list[str]) -> np.ndarray:
    """``word_hashes`` of every word, computed once per distinct word of the list."""
    if not words:
        return np.empty(0, dtype=np.uint64)
    encoded = pa.array(words, type=pa.string()).dictionary_encode()
    distinct = word_hashes(encoded.dictionary.to_pylist())
    return distinct[encoded.indices.to_numpy()]


def batch_shingles(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, index of the text each belongs to) for every text, repeats kept.

    A shingle is a word n-gram of the normalised text; a text of fewer than n words is one
    shingle of all its words, and a text without words has none.
    """
    words = [normalized_words(text) for text in texts]
    counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    hashes = _word_hashes([word for text in words for word in text])
    owner_of_word = np.repeat(np.arange(len(texts)), counts)
    grams = ngram_hashes(hashes, n)
    inside = owner_of_word[: len(grams)] == owner_of_word[n - 1 :]  # the n-gram spans one text
    shingles, owners = [grams[inside]], [owner_of_word[: len(grams)][inside]]
    starts = np.concatenate(([0], np.cumsum(counts)))
    for text in np.flatnonzero((counts > 0) & (counts < n)):
        shingles.append(ngram_hashes(hashes[starts[text] : starts[text + 1]], int(counts[text])))
        owners.append(np.array([text]))
    order = np.argsort(np.concatenate(owners), kind="stable")
    return np.concatenate(shingles)[order], np.concatenate(owners)[order]


def minhash_matrix(
    shingles: np.ndarray, owners: np.ndarray, texts: int, num_perm: int, seed: int
) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash values; ``owners`` is sorted (as ``batch_shingles``)."""
    a, b = permutations(num_perm, seed)
    out = np.full((num_perm, texts), EMPTY, dtype=np.uint32)
    mixed = _fmix32((shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    for start in range(0, len(mixed), _BLOCK_ROWS):
        block, who = mixed[start : start + _BLOCK_ROWS], owners[start : start + _BLOCK_ROWS]
        # Permutations × shingles, so each text's minimum runs along contiguous memory (8× faster
        # than reducing down the columns). Wraps mod 2^32, as datasketch's uint32 arithmetic.
        permuted = a[:, None] * block[None, :] + b[:, None]
        firsts = np.flatnonzero(np.concatenate(([True], who[1:] != who[:-1])))
        columns = who[firsts]
        # A text cut by a block boundary gets the minimum of both parts.
        reduced = np.minimum.reduceat(permuted, firsts, axis=1)
        out[:, columns] = np.minimum(out[:, columns], reduced)
    return out.T

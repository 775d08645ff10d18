"""GPT-2-style byte-level BPE tokenizer, trained and stored with Hugging Face `tokenizers`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from llm.tokenizer.special import (
    BOS_TOKEN,
    BYTE_ALPHABET_SIZE,
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
)

__all__ = ["BOS_TOKEN", "BYTE_ALPHABET_SIZE", "EOS_TOKEN", "MASK_TOKEN", "PAD_TOKEN"]

# Split regexes, in the syntax both `tokenizers` (Oniguruma) and tiktoken (fancy-regex) accept.
# "gpt2" is what ByteLevel(use_regex=True) applies; "llama3" keeps digits in groups of at most
# three and attaches one leading non-letter to words, as Llama 3's tokenizer does.
PRETOKENIZER_PATTERNS = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}


def sentinel_token(index: int) -> str:
    """Name of the index-th span-corruption sentinel (T5's <extra_id_i>)."""
    return f"<|sentinel_{index}|>"


class _CharCounter:
    """Passes texts through to the trainer while counting characters, so an empty corpus
    can be reported after training (the trainer itself silently accepts no input)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.chars += len(text)
            yield text


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    if name not in PRETOKENIZER_PATTERNS:
        raise ValueError(
            f"pretokenizer must be one of {sorted(PRETOKENIZER_PATTERNS)}, got {name!r}"
        )
    if name == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = pre_tokenizers.Split(
        tokenizers.Regex(PRETOKENIZER_PATTERNS[name]), behavior="isolated", invert=False
    )
    return pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (EOS_TOKEN,),
    min_frequency: int = 2,
    pretokenizer: str = "gpt2",
) -> tokenizers.Tokenizer:
    """Train a byte-level BPE tokenizer; special tokens get ids 0..n-1 in the given order."""
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens has duplicates: {list(special_tokens)}")
    minimum = BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"(256 bytes + {len(special_tokens)} special tokens)"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(pretokenizer)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        # Every byte must be in the vocabulary or unseen characters would be unencodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counter = _CharCounter(texts)
    tok.train_from_iterator(counter, trainer=trainer)
    if counter.chars == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus (no characters in texts)")
    return tok


def save_tokenizer(tok: tokenizers.Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write `tok` as tokenizer.json atomically, so readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)


def load_tokenizer(path: str | os.PathLike[str]) -> tokenizers.Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return tokenizers.Tokenizer.from_file(str(path))


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def eos_id(tok: tokenizers.Tokenizer) -> int:
    token_id = tok.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN} token")
    return token_id

"""Open a saved tokenizer.json as a `transformers` tokenizer, with its special-token roles set.

tokenizer.json has no notion of which added token is EOS or padding; transformers wants them
named, so the roles follow llmforge's fixed special-token names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from llm.tokenizer.bpe import BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

ROLES = {
    "eos_token": EOS_TOKEN,
    "pad_token": PAD_TOKEN,
    "bos_token": BOS_TOKEN,
    "mask_token": MASK_TOKEN,
}


def pretrained_fast(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast for `path`; roles whose token the vocabulary lacks stay unset."""
    # Imported here: transformers takes seconds to import and only this helper needs it.
    from transformers import PreTrainedTokenizerFast

    vocab = load_tokenizer(path).get_vocab()
    roles = {role: token for role, token in ROLES.items() if token in vocab}
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(path)), **roles)

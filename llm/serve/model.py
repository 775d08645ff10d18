"""A decoder ready to serve: an llmforge checkpoint (a train or fine-tune output, or one
checkpoint folder), a LoRA adapter's (its base with the adapter applied, unmerged) or an
imported Hugging Face GPT-2 / Llama folder, with its tokenizer, EOS and chat format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from llm.model.gpt import GPT
from llm.model.hf import import_hf
from llm.serve.chat import ChatFormat, JinjaChat, Message, SegmentChat
from llm.serve.fetch import local_model, local_tokenizer
from llm.tokenizer.bpe import BOS_TOKEN, EOS_TOKEN, load_tokenizer
from llm.train.checkpoint import latest_checkpoint, load_model
from llm.train.checkpoint.layout import ADAPTER_FILE

TOKENIZER_FILE = "tokenizer.json"
HF_DECODERS = ("gpt2", "llama")
DEFAULT_CHAT_TEMPLATE = "alpaca"  # the fine-tunes' default (llm.finetune.data.DataOptions)


@dataclass
class ServedModel:
    model: GPT
    tokenizer: tokenizers.Tokenizer
    eos_id: int | None
    bos_id: int | None
    chat: ChatFormat
    name: str

    @property
    def context(self) -> int:
        return self.model.config.block_size

    def encode(self, text: str) -> list[int]:
        """A prompt's ids, with what the tokenizer adds by default (a Llama BOS, say); an empty
        prompt becomes BOS (else EOS), the token a document starts after."""
        ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        start = self.bos_id if self.bos_id is not None else self.eos_id
        return ids or ([start] if start is not None else [])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        return self.chat.prompt_ids(messages, self.tokenizer)


def checkpoint_folder(path: Path) -> Path | None:
    """path itself when it is a checkpoint (an adapter's included), else the latest one under
    path/checkpoints (a train or fine-tune output) or under path."""
    weights = (path / "model.safetensors", path / "dcp", path / ADAPTER_FILE)
    if (path / "trainer_state.json").is_file() and any(w.exists() for w in weights):
        return path
    return latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)


def _hf_special(path: Path) -> dict[str, Any]:
    config = path / "tokenizer_config.json"
    found = json.loads(config.read_text()) if config.is_file() else {}
    # a special token may be written as {"content": "<s>", ...}
    return {
        k: (v["content"] if isinstance(v, dict) else v)
        for k, v in found.items()
        if k in ("bos_token", "eos_token", "chat_template") and v
    }


def _hf_tokenizer(path: Path) -> tokenizers.Tokenizer:
    if (path / TOKENIZER_FILE).is_file():
        return load_tokenizer(path / TOKENIZER_FILE)
    from transformers import AutoTokenizer  # a folder with only vocab.json + merges.txt, say

    return AutoTokenizer.from_pretrained(str(path)).backend_tokenizer


def load_served_model(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    chat_template: str | None = None,
    device: str = "cpu",
    name: str | None = None,
) -> ServedModel:
    """Load a decoder to serve. ``tokenizer``: a tokenizer.json for a checkpoint without one
    beside it; ``chat_template``: the fine-tune's (llm.finetune.templates source)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} is not a folder")
    special: dict[str, Any] = {}
    ckpt = checkpoint_folder(path)
    if ckpt is not None:
        model: Any = load_model(ckpt, device)
        beside = [ckpt / TOKENIZER_FILE, path / TOKENIZER_FILE]
        found = Path(tokenizer) if tokenizer else next((p for p in beside if p.is_file()), None)
        if found is None:
            raise ValueError(f"no {TOKENIZER_FILE} in {ckpt} or {path}: name the tokenizer")
        tok = load_tokenizer(found)
    else:
        config = path / "config.json"
        hf = json.loads(config.read_text()) if config.is_file() else {}
        if hf.get("model_type") not in HF_DECODERS:
            raise ValueError(
                f"{path} holds neither an llmforge checkpoint nor a Hugging Face "
                f"{' or '.join(HF_DECODERS)} model (config.json model_type: "
                f"{hf.get('model_type')!r})"
            )
        model = import_hf(path).to(device)
        tok = load_tokenizer(tokenizer) if tokenizer else _hf_tokenizer(path)
        special = _hf_special(path)
    if not isinstance(model, GPT):
        raise ValueError(
            f"{path}: a {type(model).__name__} does not generate text; serve a decoder"
        )
    if tok.get_vocab_size() > model.config.vocab:
        raise ValueError(
            f"{path}: the tokenizer has {tok.get_vocab_size()} tokens, "
            f"the model only {model.config.vocab}"
        )
    eos = tok.token_to_id(special.get("eos_token", EOS_TOKEN))
    bos = tok.token_to_id(special["bos_token"]) if "bos_token" in special else None
    if bos is None:
        bos = tok.token_to_id(BOS_TOKEN)
    chat: ChatFormat
    hf_template = special.pop("chat_template", None)
    if chat_template is None and hf_template is not None:
        chat = JinjaChat(hf_template, special)
    else:
        chat = SegmentChat.from_source(chat_template or DEFAULT_CHAT_TEMPLATE, eos)
    return ServedModel(model.eval(), tok, eos, bos, chat, name or str(path))


def load_registered(
    uri: str,
    *,
    tokenizer_uri: str | None = None,
    chat_template: str | None = None,
    device: str = "cpu",
    name: str | None = None,
) -> ServedModel:
    """A registered model by its URI (a local path or object storage), on whichever node this
    runs: the folder or latest checkpoint fetched, and ``tokenizer_uri``'s file (the registry's
    find, ``services.serving.tokenizer_uri``) for a checkpoint without a tokenizer beside it."""
    folder = local_model(uri)
    ckpt = checkpoint_folder(folder)
    beside = ckpt is not None and any((f / TOKENIZER_FILE).is_file() for f in (ckpt, folder))
    tokenizer = None
    if ckpt is not None and not beside and tokenizer_uri is not None:
        tokenizer = local_tokenizer(tokenizer_uri, folder)
    return load_served_model(
        folder, tokenizer=tokenizer, chat_template=chat_template, device=device, name=name
    )


def batch_slots(model: GPT, max_batch: int, cache_mb: int) -> int:
    """max_batch, or fewer where a slot's KV cache (a whole context) would take the model past
    cache_mb."""
    c = model.config
    element = next(model.parameters()).element_size()
    per_slot = 2 * c.n_layer * c.kv_heads * c.head_dim * c.block_size * element
    fits = cache_mb * 2**20 // per_slot
    return max(1, min(max_batch, fits))

"""The models an evaluation runs on: an llmforge checkpoint of any architecture with its
tokenizer.json, or a Hugging Face causal LM (so the same harness scores an exported model),
behind one small interface.

How a model scores a continuation is its ``scoring``: "loglik" (a decoder: the causal
log-likelihood, lm-eval's way), "pll" (an llmforge encoder: masked-LM pseudo-log-likelihood,
each continuation token masked in turn) or "seq2seq" (an llmforge encoder-decoder: the
decoder's log-probabilities of the continuation with the encoder reading the context).
``llm.eval.scoring.score_tokens`` picks the path; results name it per task.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from llm.generate import Sampling, generate_batch
from llm.model import hf_encoders
from llm.model.encoders import EncoderDecoder, EncoderLM
from llm.model.gpt import GPT
from llm.model.hf import import_hf
from llm.tokenizer.bpe import BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, load_tokenizer
from llm.train.checkpoint import latest_checkpoint, load_model

# how each kind of model scores a continuation (see the module docstring)
LOGLIK, PLL, SEQ2SEQ = "loglik", "pll", "seq2seq"
SCORING = {"decoder": LOGLIK, "encoder": PLL, "encoder_decoder": SEQ2SEQ}  # by ModelConfig.arch


class GenerationUnsupportedError(ValueError):
    """The model cannot generate text (a masked-LM encoder); the message says why."""


class EvalModel(ABC):
    """What scoring and generation need from a model: tokenize, logits, generate."""

    name: str = "model"
    arch: str = "decoder"
    scoring: str = LOGLIK
    max_length: int
    device: torch.device

    @abstractmethod
    def encode(self, texts: Sequence[str], *, special: bool = True) -> list[list[int]]:
        """Token ids per text; special=True adds what the tokenizer adds by default (BOS for
        some), as lm-eval's tok_encode does."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abstractmethod
    def eos_id(self) -> int | None: ...

    @property
    def prefix_id(self) -> int:
        """The token an empty context is replaced with (lm-eval: BOS, else EOS)."""
        found = self.bos_id if self.bos_id is not None else self.eos_id
        if found is None:
            raise ValueError(f"{self.name}: the tokenizer has neither BOS nor EOS to condition on")
        return found

    @property
    def bos_id(self) -> int | None:
        return None

    @abstractmethod
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded ids -> (B, T, vocab) logits."""

    def logits_at(self, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logits (len(rows), vocab) at positions (rows[i], cols[i]) of right-padded ids."""
        return self.logits(ids)[rows, cols]

    def gpt(self) -> GPT | None:
        """The llmforge GPT behind this model, whose prefix-tree scoring can use; None if none."""
        return None

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, opts: Sampling
    ) -> list[list[int]]: ...


@contextmanager
def hidden_states(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block model(...) returns the final hidden states, not logits: its LM head is
    set aside and handed out, so a caller applies it only at the positions it scores (most of
    an evaluation's positions are context, whose logits nobody reads). Works for the GPT, the
    EncoderLM (hidden states after its head transform) and EncoderDecoder.decode alike."""
    head = model.lm_head
    assert isinstance(head, nn.Module)
    setattr(model, "lm_head", nn.Identity())  # noqa: B010 - Module.__setattr__ type-checks
    try:
        yield head
    finally:
        model.lm_head = head


class _LlmforgeTokens(EvalModel):
    """An llmforge model with its tokenizers.Tokenizer: the tokenizer half of EvalModel."""

    def __init__(
        self,
        model: nn.Module,
        core: GPT | EncoderLM | EncoderDecoder,
        tokenizer: tokenizers.Tokenizer,
        name: str,
    ):
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        config = core.config
        self.arch = config.arch
        self.max_length = config.block_size
        self.device = next(core.parameters()).device
        vocab = tokenizer.get_vocab_size()
        if vocab > config.vocab:
            raise ValueError(
                f"{name}: tokenizer has {vocab} tokens but the model only {config.vocab_size}"
            )

    def encode(self, texts: Sequence[str], *, special: bool = True) -> list[list[int]]:
        encoded = self.tok.encode_batch(list(texts), add_special_tokens=special)
        return [e.ids for e in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    @property
    def eos_id(self) -> int | None:
        return self.tok.token_to_id(EOS_TOKEN)

    @property
    def bos_id(self) -> int | None:
        return self.tok.token_to_id(BOS_TOKEN)


class LlmforgeModel(_LlmforgeTokens):
    """An llmforge decoder (GPT): causal log-likelihood and KV-cache generation."""

    def __init__(self, model: nn.Module, tokenizer: tokenizers.Tokenizer, name: str = "llmforge"):
        core = getattr(model, "_orig_mod", model)
        if not isinstance(core, GPT):
            raise TypeError(
                f"LlmforgeModel needs a decoder GPT, got {type(core).__name__}; "
                "llmforge_eval_model wraps every architecture"
            )
        super().__init__(model, core, tokenizer, name)
        self.core = core

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids.to(self.device))[0]

    @torch.no_grad()
    def logits_at(self, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        with hidden_states(self.core) as head:
            hidden = self.core(ids.to(self.device))[0]
            return head(hidden[rows, cols])

    def gpt(self) -> GPT | None:
        return self.core

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, opts: Sampling
    ) -> list[list[int]]:
        return generate_batch(self.model, prompts, max_new_tokens, opts)


class LlmforgeEncoder(_LlmforgeTokens):
    """An llmforge EncoderLM: continuations are scored by pseudo-log-likelihood; it cannot
    generate."""

    scoring = PLL

    def __init__(
        self, model: nn.Module, tokenizer: tokenizers.Tokenizer, name: str = "llmforge-encoder"
    ):
        core = getattr(model, "_orig_mod", model)
        if not isinstance(core, EncoderLM):
            raise TypeError(f"LlmforgeEncoder needs an EncoderLM, got {type(core).__name__}")
        super().__init__(model, core, tokenizer, name)
        self.core = core
        mask = tokenizer.token_to_id(MASK_TOKEN)
        if mask is None:
            raise ValueError(
                f"{name}: pseudo-log-likelihood scoring masks tokens, but the tokenizer has no "
                f"{MASK_TOKEN}; pass the tokenizer the encoder was trained with"
            )
        self.mask_id: int = mask

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits: position i predicts token i itself (not the next one)."""
        return self.model(ids.to(self.device))[0]

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, opts: Sampling
    ) -> list[list[int]]:
        raise GenerationUnsupportedError(
            f"{self.name}: an encoder (masked LM) does not generate text; score it with "
            "log-likelihood tasks (pseudo-log-likelihood) or use a decoder or encoder-decoder"
        )


class LlmforgeSeq2Seq(_LlmforgeTokens):
    """An llmforge EncoderDecoder: the encoder reads the context, the decoder scores or
    generates the continuation (KV cache) from START_ID."""

    scoring = SEQ2SEQ

    def __init__(
        self, model: nn.Module, tokenizer: tokenizers.Tokenizer, name: str = "llmforge-seq2seq"
    ):
        core = getattr(model, "_orig_mod", model)
        if not isinstance(core, EncoderDecoder):
            raise TypeError(f"LlmforgeSeq2Seq needs an EncoderDecoder, got {type(core).__name__}")
        super().__init__(model, core, tokenizer, name)
        self.core = core

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{self.name}: an encoder-decoder has no single-sequence logits; its scores come "
            "from llm.eval.scoring.score_tokens (context to the encoder, continuation to the "
            "decoder)"
        )

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, opts: Sampling
    ) -> list[list[int]]:
        return generate_batch(self.core, prompts, max_new_tokens, opts)


def llmforge_eval_model(
    model: nn.Module, tokenizer: tokenizers.Tokenizer, name: str = "llmforge"
) -> EvalModel:
    """The EvalModel for an llmforge model of any architecture (its config's arch)."""
    core = getattr(model, "_orig_mod", model)
    if isinstance(core, EncoderLM):
        return LlmforgeEncoder(model, tokenizer, name)
    if isinstance(core, EncoderDecoder):
        return LlmforgeSeq2Seq(model, tokenizer, name)
    return LlmforgeModel(model, tokenizer, name)


class HFModel(EvalModel):
    """A transformers causal LM and its tokenizer, used exactly as lm-eval's `hf` model does."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf") -> None:
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        cfg = model.config
        names = ("n_positions", "max_position_embeddings")
        length = next((getattr(cfg, k) for k in names if hasattr(cfg, k)), None)
        self.max_length = int(length or tokenizer.model_max_length)

    def encode(self, texts: Sequence[str], *, special: bool = True) -> list[list[int]]:
        if not texts:  # transformers fails on an empty batch
            return []
        return [list(ids) for ids in self.tok(list(texts), add_special_tokens=special)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    @property
    def eos_id(self) -> int | None:
        return self.tok.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.tok.bos_token_id

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids.to(self.device)).logits

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, opts: Sampling
    ) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding, as decoder-only generation needs
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        sample = opts.temperature > 0
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=opts.temperature if sample else None,
            top_k=opts.top_k if sample else None,
            top_p=opts.top_p if sample else None,
            pad_token_id=self.eos_id if self.eos_id is not None else 0,
            eos_token_id=opts.eos_id,
        )
        new = out[:, width:].tolist()
        eos = opts.eos_id
        return [row[: row.index(eos)] if eos in row else row for row in new]


def _hf_tokenizer(path: str | os.PathLike[str]) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    vocab = tok.get_vocab()
    # an llmforge export names no special tokens; its EOS is still the document separator
    if tok.eos_token is None and EOS_TOKEN in vocab:
        tok.eos_token = EOS_TOKEN
    return tok


def _as_tokenizer(tokenizer: Any, fallback_dir: Path | None) -> tokenizers.Tokenizer:
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    if tokenizer is None:
        if fallback_dir is None or not (fallback_dir / "tokenizer.json").is_file():
            raise ValueError(
                f"no tokenizer: {fallback_dir} holds no tokenizer.json; pass tokenizer= "
                "(for example the tokenizer.json of the token shards the model trained on)"
            )
        tokenizer = fallback_dir / "tokenizer.json"
    manifest = Path(tokenizer) / "manifest.json"
    if manifest.is_file():  # a token-shard folder: the tokenizer its manifest names
        tokenizer = Path(tokenizer) / json.loads(manifest.read_text())["tokenizer"]["file"]
    return load_tokenizer(tokenizer)


def _checkpoint_dir(path: Path) -> Path | None:
    weights = (path / "model.safetensors").is_file() or (path / "dcp").is_dir()  # FSDP: sharded
    if (path / "trainer_state.json").is_file() and weights:
        return path
    return latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)


def load_eval_model(
    path: str | os.PathLike[str], tokenizer: Any = None, device: str = "cpu"
) -> EvalModel:
    """An llmforge checkpoint of any architecture (or a train output folder: its latest
    checkpoint) or a Hugging Face causal-LM folder; anything else is a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} is not a folder")
    ckpt = _checkpoint_dir(path)
    if ckpt is not None:
        tok = _as_tokenizer(tokenizer, ckpt if (ckpt / "tokenizer.json").is_file() else path)
        return llmforge_eval_model(load_model(ckpt, device), tok, name=str(ckpt))
    config = path / "config.json"
    hf = json.loads(config.read_text()) if config.is_file() else {}
    model_type = hf.get("model_type")
    if model_type in (*hf_encoders.MASKED_LM, *hf_encoders.SEQ2SEQ):
        # an exported (or plain) BERT/RoBERTa-PreLN or BART/mBART folder: ours again, scored
        # like the checkpoint it came from (PLL or seq2seq), not as a causal LM
        tok = _as_tokenizer(tokenizer, path)
        return llmforge_eval_model(import_hf(path).to(device), tok, name=str(path))
    if not model_type:
        raise ValueError(
            f"{path} is not a model: expected an llmforge checkpoint (config.json, "
            "model.safetensors, trainer_state.json), a train output folder with checkpoints/, "
            "or a Hugging Face model folder (config.json with model_type)"
        )
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model = model.to(device)
    return HFModel(model, _hf_tokenizer(tokenizer or path), name=str(path))


def as_eval_model(model: Any, tokenizer: Any = None, device: str = "cpu") -> EvalModel:
    """Wrap what the caller has: an EvalModel, a path, an llmforge GPT, EncoderLM or
    EncoderDecoder (+ tokenizer), or a transformers model (+ tokenizer)."""
    if isinstance(model, EvalModel):
        return model
    if isinstance(model, str | os.PathLike):
        return load_eval_model(model, tokenizer, device)
    if isinstance(getattr(model, "_orig_mod", model), GPT | EncoderLM | EncoderDecoder):
        return llmforge_eval_model(model, _as_tokenizer(tokenizer, None))
    if hasattr(model, "config") and hasattr(model, "generate"):
        tok = _hf_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer
        return HFModel(model, tok)
    raise TypeError(
        f"cannot evaluate a {type(model).__name__}: pass an llmforge model, an HF model or a path"
    )

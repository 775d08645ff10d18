"""Encoder-only (masked LM, BERT-style) and encoder-decoder (T5-style) models.

They reuse the decoder's blocks, norms, masks and positions; only the wiring differs: the
encoder attends both ways, and each decoder block cross-attends to the encoder's output.
"""

from __future__ import annotations

import torch
from torch import nn

from llm.model.config import ModelConfig
from llm.model.gpt import GPT, attention_inputs, lm_loss, positions_for
from llm.model.layers import AttnInputs, Block, KVCache, alibi_slopes, init_weights, make_norm

# the decoder's first input: T5 starts from its pad token, id 0
START_ID = 0


def shift_right(targets: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing decoder input for targets (B, T): START_ID, then targets[:, :-1], with
    ignored (-100) labels replaced by START_ID, T5's pad."""
    shifted = torch.cat((torch.full_like(targets[:, :1], START_ID), targets[:, :-1]), dim=1)
    return shifted.masked_fill(shifted == -100, START_ID)


class _Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab, config.n_embd)
        learned = config.position == "learned"
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if learned else None
        self.ln_embed = make_norm(config, config.n_embd, config.embed_norm)
        self.drop = nn.Dropout(config.dropout_at("embd"))
        self.slopes = alibi_slopes(config.n_head) if config.position == "alibi" else None

    def forward(
        self, idx: torch.Tensor, mask: torch.Tensor | None, causal: bool, past: int = 0
    ) -> tuple[torch.Tensor, AttnInputs]:
        if past + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence length {past + idx.shape[1]} exceeds ModelConfig.block_size "
                f"({self.config.block_size})"
            )
        positions = positions_for(idx.shape[1], past, mask, idx.device)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        inputs = attention_inputs(
            self.config,
            positions,
            past=past,
            causal=causal,
            attention_mask=mask,
            slopes=self.slopes,
            dtype=x.dtype,
        )
        return self.drop(self.ln_embed(x)), inputs


class EncoderLM(nn.Module):
    """Bidirectional encoder with a masked-LM head; targets are -100 except at masked tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd, config.final_norm)
        # BERT's head transform before the vocabulary projection
        self.head_dense = nn.Linear(config.n_embd, config.n_embd)
        self.head_norm = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.wte.weight
        init_weights(self, config, config.n_layer)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.hidden_states(idx, attention_mask=attention_mask)
        h = self.head_norm(nn.functional.gelu(self.head_dense(x)))
        logits = self.lm_head(h)
        return logits, None if targets is None else lm_loss(logits, targets)

    def hidden_states(
        self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """idx (B, T) -> the encoder's output (B, T, n_embd), before the masked-LM head: what
        a classification head (llm.model.classifier) pools."""
        x, inputs = self.embed(idx, attention_mask, causal=False)
        for block in self.blocks:
            x = block(x, inputs)
        return self.ln_f(x)


class EncoderDecoder(nn.Module):
    """The encoder reads the (corrupted) source; the decoder predicts the target from it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _Embeddings(config)
        n_enc = config.encoder_layers
        self.encoder = nn.ModuleList(Block(config, i) for i in range(n_enc))
        self.ln_enc = make_norm(config, config.n_embd, config.final_norm)
        self.decoder = nn.ModuleList(Block(config, i, cross=True) for i in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd, config.final_norm)
        self.lm_head = nn.Linear(config.n_embd, config.vocab, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.wte.weight
        init_weights(self, config, n_enc + config.n_layer)

    @property
    def blocks(self) -> list[nn.Module]:
        """Every transformer block, encoder's then decoder's: what activation checkpointing,
        per-block compilation and FSDP wrap, as they do a GPT's ``blocks``."""
        return [*self.encoder, *self.decoder]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, inputs = self.embed(src, src_mask, causal=False)
        for block in self.encoder:
            x = block(x, inputs)
        return self.ln_enc(x)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits for tgt (B, T) given the encoder output; cache holds past decoder tokens."""
        past = cache.length if cache is not None else 0
        x, inputs = self.embed(tgt, None, causal=True, past=past)
        inputs.cache = cache
        cross = AttnInputs(mask=None if src_mask is None else src_mask[:, None, None, :].bool())
        for block in self.decoder:
            x = block(x, inputs, memory, cross)
        if cache is not None:
            cache.length = past + tgt.shape[1]
        return self.lm_head(self.ln_f(x))

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        src_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits, None if targets is None else lm_loss(logits, targets)


def build_model(config: ModelConfig) -> nn.Module:
    """The model ModelConfig.arch names."""
    if config.arch == "encoder":
        return EncoderLM(config)
    if config.arch == "encoder_decoder":
        return EncoderDecoder(config)
    return GPT(config)

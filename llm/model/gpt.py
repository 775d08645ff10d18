"""A decoder-only Transformer (causal LM), written to be read top to bottom.

The defaults give GPT-2: pre-norm LayerNorm blocks, GELU MLP, learned absolute positions and an
LM head that shares its weight with the token embedding. ModelConfig switches turn it into a
Llama-style model (RMSNorm, SwiGLU, RoPE, grouped-query attention) or anything in between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm.model.config import ModelConfig
from llm.model.layers import (
    AttnInputs,
    Block,
    KVCache,
    SlotKVCache,
    alibi_slopes,
    init_weights,
    make_norm,
    rope_tables,
)


def positions_for(
    batch_len: int, past: int, attention_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Position ids (B|1, T). With a padding mask, each row counts only its real tokens, so a
    left-padded prompt gets the same positions as the prompt alone."""
    if attention_mask is None:
        return torch.arange(past, past + batch_len, device=device)[None]
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]


def attention_inputs(
    config: ModelConfig,
    positions: torch.Tensor,
    *,
    past: int,
    causal: bool,
    attention_mask: torch.Tensor | None,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
) -> AttnInputs:
    """Build the mask and rotary tables once per forward; every layer reuses them."""
    T = positions.shape[-1]
    rope = rope_tables(config, positions) if config.position == "rope" else None
    needs_mask = attention_mask is not None or slopes is not None or (causal and past > 0 and T > 1)
    if not needs_mask:
        # the fused kernels: causal on a fresh sequence, no mask for one new token or an encoder
        return AttnInputs(rope=rope, is_causal=causal and past == 0)
    device = positions.device
    q_idx = torch.arange(past, past + T, device=device)[:, None]
    k_idx = torch.arange(past + T, device=device)[None]
    allowed = k_idx <= q_idx if causal else torch.ones_like(k_idx - q_idx, dtype=torch.bool)
    if attention_mask is not None:
        # a padding query may still see itself, so its softmax row is never empty (NaN)
        allowed = (allowed & attention_mask[:, None, None, :].bool()) | (k_idx == q_idx)
    if slopes is None:
        return AttnInputs(rope=rope, mask=allowed)
    distance = -(k_idx - q_idx).abs() if not causal else (k_idx - q_idx)
    bias = slopes.to(device)[:, None, None] * distance.to(dtype)
    return AttnInputs(rope=rope, mask=bias.masked_fill(~allowed, float("-inf")))


def slot_attention_inputs(
    config: ModelConfig,
    cache: SlotKVCache,
    new: int,
    slopes: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, AttnInputs]:
    """Positions (B, new) and masks for rows that each continue their own sequence: row i's
    query at position p sees its cached columns 0..p, never another row's longer past."""
    positions = cache.positions(new)
    k_idx = torch.arange(int(positions.max()) + 1, device=positions.device)
    allowed = (k_idx <= positions[..., None])[:, None]  # (B, 1, new, S)
    rope = rope_tables(config, positions) if config.position == "rope" else None
    if slopes is None:
        return positions, AttnInputs(rope=rope, mask=allowed, cache=cache)
    # a row's columns are its positions, so column distance is ALiBi's token distance
    distance = (k_idx - positions[..., None])[:, None].to(dtype)
    bias = slopes.to(positions.device)[:, None, None] * distance
    return positions, AttnInputs(
        rope=rope, mask=bias.masked_fill(~allowed, float("-inf")), cache=cache
    )


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "decoder":
            raise ValueError(
                f"GPT builds ModelConfig.arch='decoder', got {config.arch!r}; "
                "use llm.model.build_model for the other architectures"
            )
        self.config = config
        self.wte = nn.Embedding(config.vocab, config.n_embd)
        self.wpe = (
            nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        )
        self.ln_embed = make_norm(config, config.n_embd, config.embed_norm)
        self.drop = nn.Dropout(config.dropout_at("embd"))
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd, config.final_norm)
        self.lm_head = nn.Linear(config.n_embd, config.vocab, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.slopes = alibi_slopes(config.n_head) if config.position == "alibi" else None
        init_weights(self, config, config.n_layer)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for batch sequences of up to max_len (default block_size) tokens."""
        return KVCache(self.config, batch, max_len or self.config.block_size, self.wte.weight)

    def new_slot_cache(self, slots: int, max_len: int | None = None) -> SlotKVCache:
        """An empty cache of slots independent sequences (see SlotKVCache)."""
        max_len = max_len or self.config.block_size
        return SlotKVCache.allocate(self.config, slots, max_len, self.wte.weight)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | SlotKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, vocab). attention_mask (B, past + T) marks real tokens
        (1) and padding (0); cache holds the keys and values of the past tokens (a SlotKVCache:
        each row's own past, of its own length)."""
        if isinstance(cache, SlotKVCache):
            return self.lm_head(self.slot_hidden(idx, cache)), None
        x = self.hidden_states(idx, attention_mask=attention_mask, cache=cache)
        logits = self.lm_head(x)
        return logits, None if targets is None else lm_loss(logits, targets)

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> the final norm's output (B, T, n_embd): what the LM head reads, and
        what a classification head (llm.model.classifier) pools."""
        past = cache.length if cache is not None else 0
        seq_len = past + idx.shape[1]
        limit = min(self.config.block_size, cache.max_len if cache is not None else seq_len)
        if seq_len > limit:
            raise ValueError(
                f"sequence length {seq_len} exceeds ModelConfig.block_size "
                f"({self.config.block_size}) or the KV cache's max_len"
            )
        positions = positions_for(idx.shape[1], past, attention_mask, idx.device)
        inputs = attention_inputs(
            self.config,
            positions,
            past=past,
            causal=True,
            attention_mask=attention_mask,
            slopes=self.slopes,
            dtype=self.wte.weight.dtype,
        )
        inputs.cache = cache
        x = self._trunk(idx, positions, inputs)
        if cache is not None:
            cache.length = seq_len
        return x

    def masked_hidden(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        cache: KVCache | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, n_embd) of tokens at the given positions (B, T) that
        attend where allowed (B, 1, T, past + T) is True: rows that pack several sequences, or
        a tree of sequences sharing their prefixes (evaluation's choices after one context).
        Every token must be allowed to see itself; cache holds the past columns' keys and
        values. ALiBi biases by column distance, which such rows do not keep: not supported.

        With at (B, Q), column indices, only those columns' hidden states are made, (B, Q,
        n_embd): the last block computes the other columns' keys and values only (where a
        scorer reads logits at a third of the tokens, its queries, MLP and output projection
        were an eighth of the FLOPs of a 4-layer model)."""
        if self.slopes is not None:
            raise ValueError("masked_hidden needs positions without ALiBi's column distances")
        if int(positions.max()) >= self.config.block_size:
            raise ValueError(
                f"position {int(positions.max())} exceeds ModelConfig.block_size "
                f"({self.config.block_size})"
            )
        past = cache.length if cache is not None else 0
        if allowed.shape[-1] != past + idx.shape[1]:
            raise ValueError(f"allowed has {allowed.shape[-1]} columns, not {past + idx.shape[1]}")
        rope = rope_tables(self.config, positions) if self.config.position == "rope" else None
        if at is not None and (int(at.min()) < 0 or int(at.max()) >= idx.shape[1]):
            raise ValueError(f"at holds columns outside 0..{idx.shape[1] - 1}")
        x = self._trunk(idx, positions, AttnInputs(rope=rope, mask=allowed, cache=cache), at)
        if cache is not None:
            cache.length = past + idx.shape[1]
        return x

    def _trunk(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        inputs: AttnInputs,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings, blocks and the final norm: the hidden states the LM head reads (at those
        columns only, where at is given)."""
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(self.ln_embed(x))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, inputs) if at is None or i < last else block(x, inputs, at=at)
        return self.ln_f(x)

    def slot_hidden(self, idx: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        """Final hidden states (B, T, n_embd) of rows that each continue their own sequence in
        cache (continuous batching). A server applies lm_head only where it reads logits."""
        end = int(cache.lengths.max()) + idx.shape[1]
        if end > min(self.config.block_size, cache.max_len):
            raise ValueError(
                f"sequence length {end} exceeds ModelConfig.block_size "
                f"({self.config.block_size}) or the KV cache's max_len"
            )
        positions, inputs = slot_attention_inputs(
            self.config, cache, idx.shape[1], self.slopes, self.wte.weight.dtype
        )
        x = self._trunk(idx, positions, inputs)
        cache.advance(idx.shape[1])
        return x

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Count each distinct tensor once, so a tied LM head is not counted twice.

        exclude_embeddings drops the lookup tables: the position table always, and the token
        table only when untied, because a tied one is also the LM head's matmul weight.
        """
        # parameters() yields a shared tensor only once
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), the PaLM appendix B / nanoGPT estimate.

        6N covers the weight matmuls (2 FLOPs per multiply-add, x3 for forward plus backward);
        12 * L * n_embd * T adds attention's QK^T and AV products, which carry no parameters.
        N excludes embedding lookups, which cost no matmul FLOPs.
        """
        cfg = self.config
        n = self.num_parameters(exclude_embeddings=True)
        return float(6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size)

"""The Transformer's parts, shared by the decoder, the encoder and the encoder-decoder.

Each part reads its switches from ModelConfig: norm type and placement, QK-norm, activation,
grouped-query attention. Masks and rotary tables are built once per forward by the model and
handed to every layer in an AttnInputs, so a layer never recomputes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llm.model.config import ModelConfig


class KVCache:
    """Preallocated keys and values of every layer, so each decoding step is one slice write."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, like: torch.Tensor) -> None:
        shape = (config.n_layer, batch, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.length = 0  # positions filled; advanced by the model after all layers ran
        self.max_len = max_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class SlotKVCache:
    """Keys and values for rows (slots) that each hold a sequence of its own length.

    Continuous batching runs sequences that joined at different steps in one forward: row i
    writes its new tokens at lengths[i] and attends to its own first lengths[i] + t + 1
    columns only, so no row waits for, or pads to, another. ``rows`` gives a view of some slots
    (sharing storage and lengths), e.g. the slots of sequences that are joining.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> None:
        self.k, self.v, self.lengths = k, v, lengths  # (layers, B, kv_heads, max_len, head_dim)
        self.max_len = k.shape[3]

    @classmethod
    def allocate(
        cls, config: ModelConfig, slots: int, max_len: int, like: torch.Tensor
    ) -> SlotKVCache:
        shape = (config.n_layer, slots, config.kv_heads, max_len, config.head_dim)
        k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        lengths = torch.zeros(slots, dtype=torch.long, device=like.device)
        return cls(k, torch.zeros_like(k), lengths)

    def rows(self, start: int, stop: int) -> SlotKVCache:
        """Slots start..stop-1 as a cache of their own; writes land in this cache."""
        return SlotKVCache(self.k[:, start:stop], self.v[:, start:stop], self.lengths[start:stop])

    def move(self, src: int, dst: int) -> None:
        """Copy slot src into slot dst (compacting the running rows after one leaves)."""
        used = int(self.lengths[src])
        self.k[:, dst, :, :used] = self.k[:, src, :, :used]
        self.v[:, dst, :, :used] = self.v[:, src, :, :used]
        self.lengths[dst] = used

    def positions(self, new: int) -> torch.Tensor:
        """(B, new) position of each row's new tokens: they follow the row's own past."""
        return self.lengths[:, None] + torch.arange(new, device=self.lengths.device)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        cols = self.positions(k.shape[2])
        # advanced indices around a slice put their (B, T) dims first: (B, T, kv_heads, dim)
        self.k[layer][rows, :, cols] = k.transpose(1, 2)
        self.v[layer][rows, :, cols] = v.transpose(1, 2)
        end = int(cols.max()) + 1
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, new: int) -> None:
        self.lengths += new


@dataclass
class AttnInputs:
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin: (B, 1, T, head_dim)
    mask: torch.Tensor | None = None  # bool "may attend" or additive float, (B|1, H|1, T, S)
    is_causal: bool = False  # lets SDPA use its fused causal kernel when mask is None
    cache: KVCache | SlotKVCache | None = None


def make_norm(config: ModelConfig, dim: int, enabled: bool = True) -> nn.Module:
    """The configured norm over dim features; an Identity where enabled is False, so a model
    without an optional norm (embed_norm, final_norm) keeps one code path."""
    if not enabled:
        return nn.Identity()
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions (B, T), in the rotate-half layout Llama checkpoints use."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta
        ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def _rows_at(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """t (B, H, T, D) at the positions at (B, Q) of each row: (B, H, Q, D)."""
    return t.gather(2, at[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al. 2022: geometric per-head slopes, interpolated when n_head is no power of 2."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    extra = [2 ** (-4 * (2 * i + 1) / closest) for i in range(n_head - closest)]
    return torch.tensor(base + extra)


class Attention(nn.Module):
    """Self-attention (fused qkv) or cross-attention (q from x, k and v from memory).

    Keys and values have kv_heads heads; SDPA's enable_gqa lets each serve n_head / kv_heads
    query heads without materialising repeated copies.
    """

    def __init__(self, config: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.layer, self.cross = layer, cross
        self.dropout = config.dropout_at("attn")
        kv_width = 2 * self.kv_heads * self.head_dim
        if cross:
            self.q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            self.kv = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        else:
            # one matmul for q, k and v is faster than three small ones
            self.qkv = nn.Linear(config.n_embd, config.n_embd + kv_width, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout_at("resid"))
        self.q_norm = make_norm(config, self.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, self.head_dim) if config.qk_norm else None

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        # (B, T, n * head_dim) -> (B, n, T, head_dim) so every head attends independently
        return t.view(t.shape[0], t.shape[1], n, self.head_dim).transpose(1, 2)

    def _project(
        self, x: torch.Tensor, memory: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv_width = self.kv_heads * self.head_dim
        if self.cross:
            assert memory is not None, "cross-attention needs the encoder's output"
            q = self.q(x)
            k, v = self.kv(memory).split(kv_width, dim=2)
        else:
            q, k, v = self.qkv(x).split([self.n_head * self.head_dim, kv_width, kv_width], dim=2)
        q, k, v = (
            self._heads(q, self.n_head),
            self._heads(k, self.kv_heads),
            self._heads(v, self.kv_heads),
        )
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        inputs: AttnInputs,
        memory: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with at (B, Q), the outputs of only the queries at those
        positions of each row, (B, Q, C), every position still giving its key and value."""
        B, T, C = x.shape
        q, k, v = self._project(x, memory)
        mask = inputs.mask
        if at is not None:
            q = _rows_at(q, at)
            if mask is not None:
                mask = _rows_at(mask.expand(B, -1, T, -1), at)
        if inputs.rope is not None and not self.cross:
            cos, sin = inputs.rope
            k = _apply_rope(k, cos, sin)
            if at is not None:
                cos, sin = _rows_at(cos, at), _rows_at(sin, at)
            q = _apply_rope(q, cos, sin)
        if inputs.cache is not None and not self.cross:
            k, v = inputs.cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=inputs.is_causal and mask is None and at is None,
            enable_gqa=self.kv_heads != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, q.shape[2], C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.activation = config.activation
        # SwiGLU's gate and up projections are fused into one matmul, gate first
        width = 2 * config.hidden_dim if self.activation == "swiglu" else config.hidden_dim
        self.fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout_at("resid"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Attention and MLP sublayers, each with a residual add, normed before (pre) or after (post).

    With cross=True a cross-attention sublayer over the encoder's output sits between them.
    """

    def __init__(self, config: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = Attention(config, layer)
        if cross:
            self.ln_cross = make_norm(config, config.n_embd)
            self.cross_attn = Attention(config, layer, cross=True)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def _sublayer(
        self, x: torch.Tensor, norm: nn.Module, fn: nn.Module, *args: object
    ) -> torch.Tensor:
        if self.pre_norm:
            return x + fn(norm(x), *args)
        return norm(x + fn(x, *args))

    def forward(
        self,
        x: torch.Tensor,
        inputs: AttnInputs,
        memory: torch.Tensor | None = None,
        memory_inputs: AttnInputs | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with at (B, Q), only the outputs at those positions of each
        row, (B, Q, C): the other positions give their keys and values and nothing else (the last
        block of a model whose logits are read at a few positions)."""
        if at is not None:
            if memory is not None:
                raise ValueError("at= is for decoder-only blocks, without cross-attention")
            mine = x.gather(1, at[..., None].expand(-1, -1, x.shape[2]))
            if self.pre_norm:
                x = mine + self.attn(self.ln_1(x), inputs, at=at)
            else:
                x = self.ln_1(mine + self.attn(x, inputs, at=at))
            return self._sublayer(x, self.ln_2, self.mlp)
        x = self._sublayer(x, self.ln_1, self.attn, inputs)
        if memory is not None:
            x = self._sublayer(x, self.ln_cross, self.cross_attn, memory_inputs, memory)
        return self._sublayer(x, self.ln_2, self.mlp)


def init_weights(model: nn.Module, config: ModelConfig, n_residual_layers: int) -> None:
    """N(0, init_std) for matmuls and embeddings; with init="gpt2" the residual projections get
    init_std / sqrt(2 * layers), since each block adds two contributions to the residual stream
    and their variance would otherwise grow with depth."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    if config.init != "gpt2":
        return
    residual_std = config.init_std / math.sqrt(2 * n_residual_layers)
    for name, param in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            nn.init.normal_(param, mean=0.0, std=residual_std)

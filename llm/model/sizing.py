"""Size a config without building it: exact parameter count, FLOPs per token, training memory.

count_parameters mirrors the modules in layers.py, gpt.py and encoders.py one tensor at a
time; tests hold it equal to sum(p.numel()) of the built model across the config switches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llm.model.config import ModelConfig

# bytes per parameter for weights, gradients and AdamW's two moments, and per activation value
PRECISIONS: dict[str, dict[str, int]] = {
    "fp32": {"weights": 4, "grads": 4, "optimizer": 8, "activation": 4},
    # autocast keeps fp32 master weights and grads; activations are saved in bf16
    "bf16-mixed": {"weights": 4, "grads": 4, "optimizer": 8, "activation": 2},
    "bf16": {"weights": 2, "grads": 2, "optimizer": 4, "activation": 2},
}


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(c: ModelConfig, dim: int) -> int:
    return dim if c.norm == "rmsnorm" or not c.bias else 2 * dim


def _attention(c: ModelConfig, cross: bool) -> int:
    kv_width = 2 * c.kv_heads * c.head_dim
    if cross:
        qkv = _linear(c.n_embd, c.n_embd, c.bias) + _linear(c.n_embd, kv_width, c.bias)
    else:
        qkv = _linear(c.n_embd, c.n_embd + kv_width, c.bias)
    qk_norm = 2 * _norm(c, c.head_dim) if c.qk_norm else 0
    return qkv + _linear(c.n_embd, c.n_embd, c.bias) + qk_norm


def _block(c: ModelConfig, cross: bool = False) -> int:
    fc_width = 2 * c.hidden_dim if c.activation == "swiglu" else c.hidden_dim
    mlp = _linear(c.n_embd, fc_width, c.bias) + _linear(c.hidden_dim, c.n_embd, c.bias)
    n = 2 * _norm(c, c.n_embd) + _attention(c, cross=False) + mlp
    if cross:
        n += _norm(c, c.n_embd) + _attention(c, cross=True)
    return n


def embedding_parameters(c: ModelConfig) -> int:
    """The lookup tables: token embedding (untied only) and learned positions."""
    positions = c.block_size * c.n_embd if c.position == "learned" else 0
    return positions + (0 if c.tie_embeddings else c.vocab * c.n_embd)


def count_parameters(c: ModelConfig, exclude_embeddings: bool = False) -> int:
    """Exactly sum(p.numel()) of llm.model.build_model(c), counting a tied head once."""
    n = c.vocab * c.n_embd  # token embedding, which is also a tied head
    n += c.block_size * c.n_embd if c.position == "learned" else 0
    if not c.tie_embeddings:
        n += c.vocab * c.n_embd
    n += _norm(c, c.n_embd) if c.embed_norm else 0
    final = _norm(c, c.n_embd) if c.final_norm else 0
    if c.arch == "encoder_decoder":
        n += c.encoder_layers * _block(c) + final
        n += c.n_layer * _block(c, cross=True) + final
    else:
        n += c.n_layer * _block(c) + final
    if c.arch == "encoder":
        # the masked-LM head's transform: dense + norm before the vocabulary projection
        n += _linear(c.n_embd, c.n_embd, True) + _norm(c, c.n_embd)
    return n - embedding_parameters(c) if exclude_embeddings else n


def flops_per_token(c: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N for the weight matmuls (forward + backward) plus
    12 * layers * n_embd * seq_len for attention's QK^T and AV, which carry no parameters."""
    seq_len = seq_len or c.block_size
    layers = c.n_layer + (c.encoder_layers if c.arch == "encoder_decoder" else 0)
    return float(
        6 * count_parameters(c, exclude_embeddings=True) + 12 * layers * c.n_embd * seq_len
    )


@dataclass(frozen=True)
class Memory:
    """Training memory per GPU in bytes."""

    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def activation_bytes(
    c: ModelConfig, micro_batch: int, seq_len: int, precision: str, checkpointing: bool
) -> float:
    """Korthikanti et al. 2022: about 34 * s * b * h values per layer saved for backward (in
    16-bit units), without the s^2 attention matrix, which fused SDPA kernels never store.
    Checkpointing keeps only each layer's input and recomputes one layer at a time."""
    width = PRECISIONS[precision]["activation"]
    layers = c.n_layer + (c.encoder_layers if c.arch == "encoder_decoder" else 0)
    per_layer = 34 * seq_len * micro_batch * c.n_embd * width / 2
    layer_inputs = seq_len * micro_batch * c.n_embd * width
    logits = seq_len * micro_batch * c.vocab * 4  # the loss upcasts logits to fp32
    if checkpointing:
        return layers * layer_inputs + per_layer + logits
    return layers * per_layer + logits


def training_memory(
    c: ModelConfig,
    *,
    micro_batch: int,
    seq_len: int | None = None,
    precision: str = "bf16-mixed",
    strategy: str = "ddp",
    n_gpus: int = 1,
    checkpointing: bool = False,
) -> Memory:
    """DDP replicates weights, grads and optimizer state; FSDP (ZeRO-3) shards all three."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if n_gpus < 1 or micro_batch < 1:
        raise ValueError("n_gpus and micro_batch must be >= 1")
    n = count_parameters(c)
    shard = n_gpus if strategy == "fsdp" else 1
    b = PRECISIONS[precision]
    acts = activation_bytes(c, micro_batch, seq_len or c.block_size, precision, checkpointing)
    return Memory(
        weights=n * b["weights"] / shard,
        grads=n * b["grads"] / shard,
        optimizer=n * b["optimizer"] / shard,
        activations=acts,
    )

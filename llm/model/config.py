"""Model hyperparameters: one frozen dataclass, saved next to every checkpoint as config.json.

Every architectural choice is a field here, and every new field defaults to the original
GPT-2-style decoder, so config.json files written before a field existed still load unchanged.
The same dataclass is the ``model`` section of the train and tune job specs (pydantic validates
it there, running the checks below), where vocab_size is left to the token shards' tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the allowed values of each string-valued switch; checked at construction time
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ("decoder", "encoder", "encoder_decoder"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_placement": ("pre", "post"),
    "activation": ("gelu", "swiglu", "relu2"),
    "position": ("learned", "rope", "alibi"),
    "init": ("gpt2", "normal"),
}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int | None = None  # None: the tokenizer's, set by the job that reads the data
    block_size: int = 128  # max context length
    n_layer: int = 4  # decoder layers (encoder layers for arch="encoder")
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # default for the three dropout sites below
    bias: bool = False
    tie_embeddings: bool = True
    arch: str = "decoder"
    n_encoder_layer: int | None = None  # encoder_decoder only; None means n_layer
    n_kv_head: int | None = None  # None: multi-head; 1: multi-query; else grouped-query
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    qk_norm: bool = False
    embed_norm: bool = False  # a norm over token + position embeddings (BERT, BART)
    final_norm: bool = True  # the norm after the last block; post-norm BERT and BART have none
    activation: str = "gelu"
    mlp_hidden: int | None = None  # None means 4 * n_embd
    position: str = "learned"
    rope_theta: float = 10000.0
    embd_dropout: float | None = None  # None means dropout
    attn_dropout: float | None = None
    resid_dropout: float | None = None
    init: str = "gpt2"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_choices()
        self._check_floats()

    def _check_sizes(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            _positive_int(name, getattr(self, name))
        for name in ("vocab_size", "n_encoder_layer", "n_kv_head", "mlp_hidden"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by "
                f"ModelConfig.n_head ({self.n_head})"
            )
        if self.n_head % self.kv_heads != 0:
            raise ValueError(
                f"ModelConfig.n_head ({self.n_head}) must be divisible by "
                f"ModelConfig.n_kv_head ({self.n_kv_head}): each key/value head serves a group"
            )
        if self.position == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"ModelConfig.position='rope' needs an even head size, but n_embd / n_head = "
                f"{self.head_dim}"
            )
        if self.n_encoder_layer is not None and self.arch != "encoder_decoder":
            raise ValueError("ModelConfig.n_encoder_layer only applies to arch='encoder_decoder'")

    def _check_choices(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ModelConfig.{name} must be one of {list(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("bias", "tie_embeddings", "qk_norm", "embed_norm", "final_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")

    def _check_floats(self) -> None:
        for name in ("dropout", "embd_dropout", "attn_dropout", "resid_dropout"):
            value = getattr(self, name)
            if value is None and name != "dropout":
                continue
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"ModelConfig.{name} must satisfy 0 <= {name} < 1, got {value!r}")
        for name in ("norm_eps", "rope_theta", "init_std"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")

    @property
    def vocab(self) -> int:
        """vocab_size, which building a model needs: a spec may leave it to the tokenizer."""
        if self.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unset: take it from the tokenizer")
        return self.vocab_size

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden_dim(self) -> int:
        return 4 * self.n_embd if self.mlp_hidden is None else self.mlp_hidden

    @property
    def encoder_layers(self) -> int:
        return self.n_layer if self.n_encoder_layer is None else self.n_encoder_layer

    def dropout_at(self, site: str) -> float:
        """The dropout rate of one site ("embd", "attn" or "resid"), falling back to dropout."""
        value = getattr(self, f"{site}_dropout")
        return self.dropout if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"ModelConfig got unknown keys {unknown}; allowed keys are {sorted(known)}"
            )
        # a saved config describes a built model, whose vocabulary is known
        missing = sorted({"vocab_size"} - set(d))
        if missing:
            raise ValueError(f"ModelConfig is missing required keys {missing}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def _positive_int(name: str, value: object) -> None:
    # bool is a subclass of int, but True is never a sensible layer count
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""A sequence classifier: an encoder or decoder backbone, a pooling, and a linear head.

The backbone's hidden states (``hidden_states``: the final norm's output) are pooled into one
vector per sequence and mapped to ``num_labels`` logits:

    mean   the mean over real (unpadded) tokens: an encoder's default (Sentence-BERT's pooling)
    first  the first token's state: BERT's [CLS] position; encoders only, since a decoder's
           first token sees nothing after it
    last   the last real token's state, which a causal decoder has let read the whole
           sequence: a decoder's default (GPT-1's classifier, Hugging Face's
           GPT2ForSequenceClassification)

The backbone's language-model head is dropped: a classifier never computes vocabulary logits,
and DDP requires every trained parameter to take part in the loss. The backbone keeps its
ModelConfig as ``config``, so the trainer, checkpoints and sizing treat a classifier like the
model it was built from; what makes it a classifier (labels, pooling) is saved beside it
(``llm.finetune.classify``).
"""

from __future__ import annotations

import torch
from torch import nn

from llm.model.config import ModelConfig
from llm.model.encoders import EncoderLM
from llm.model.gpt import GPT

POOLINGS = ("mean", "first", "last")
DEFAULT_POOLING = {"encoder": "mean", "decoder": "last"}
# the masked-LM or LM head of each backbone: unused by a classifier
_LM_HEADS = {"encoder": ("head_dense", "head_norm", "lm_head"), "decoder": ("lm_head",)}


def pooling_for(arch: str, pooling: str | None) -> str:
    """The pooling to use for a backbone of arch: the given one if it suits the arch, else its
    default; a clear error for an arch or a pooling that cannot classify."""
    if arch not in DEFAULT_POOLING:
        raise ValueError(
            f"a classifier needs an encoder or decoder backbone, not ModelConfig.arch={arch!r}"
        )
    if pooling is None:
        return DEFAULT_POOLING[arch]
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if arch == "decoder" and pooling == "first":
        raise ValueError(
            "pooling 'first' needs an encoder: a decoder's first token attends to nothing after "
            "it; use 'last' (the default) or 'mean'"
        )
    return pooling


class SequenceClassifier(nn.Module):
    def __init__(
        self, backbone: GPT | EncoderLM, num_labels: int, pooling: str | None = None
    ) -> None:
        super().__init__()
        config: ModelConfig = backbone.config
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.pooling = pooling_for(config.arch, pooling)
        self.config = config
        self.num_labels = num_labels
        for name in _LM_HEADS[config.arch]:
            delattr(backbone, name)  # a tied LM head's weight stays in the embedding
        self.backbone = backbone
        self.drop = nn.Dropout(config.dropout_at("resid"))
        self.head = nn.Linear(config.n_embd, num_labels)
        nn.init.normal_(self.head.weight, std=config.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        """The backbone's transformer blocks: what activation checkpointing, per-block
        compilation and FSDP wrap (llm.train.parallel)."""
        blocks: nn.ModuleList = self.backbone.blocks
        return blocks

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) states and the (B, T) right-padded mask -> (B, C)."""
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "last":
            last = attention_mask.long().sum(-1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """idx (B, T) right-padded, attention_mask (B, T) 1 on real tokens -> logits (B, L)."""
        padded = not bool(attention_mask.all())
        # a causal decoder's real tokens never see right padding, so it needs no mask (and
        # keeps the fused causal kernel); an encoder attends both ways and must be told
        mask = attention_mask if padded and self.config.arch == "encoder" else None
        hidden = self.backbone.hidden_states(idx, attention_mask=mask)
        return self.head(self.drop(self.pool(hidden, attention_mask)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

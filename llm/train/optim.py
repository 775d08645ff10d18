"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llm.train.config import OPTIMIZERS, SCHEDULES


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    decay_embeddings: bool = True,
    fused: bool | None = None,
    name: str = "adamw",
) -> torch.optim.Optimizer:
    """Decay only >=2-D weights: norms, biases and 1-D gains would be pulled to zero for nothing.

    The (tied) token embedding is a matrix and decays, as in nanoGPT, unless decay_embeddings is
    False: then every nn.Embedding table (and so a tied LM head) joins the no-decay group, as some
    recipes (OLMo) prefer, since rare tokens' rows get few gradient updates to resist the decay.

    name: "adamw" (betas, eps); "adafactor" (torch's, with factored second moments: far less
    optimizer memory; betas and eps unused); "sgd" (Nesterov momentum betas[0]). Weight decay
    is decoupled in AdamW and Adafactor, and L2 in SGD.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]

    def decays(p: nn.Parameter) -> bool:
        return p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)

    groups = [
        {"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0], nesterov=True)
    if fused is None:
        # one fused kernel per step instead of torch's multi-tensor loop: a few percent of a GPU
        # step on a small model. CPUs keep the foreach implementation the tests were written on.
        fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def _warmup(step: int, lr: float, warmup_steps: int) -> float | None:
    """The warmup lr at step, or None once warmup is over."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return None


def cosine_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
    warm = _warmup(step, lr, warmup_steps)
    if warm is not None:
        return warm
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def linear_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``lr``, then a straight line down to ``min_lr`` at ``total_steps``."""
    warm = _warmup(step, lr, warmup_steps)
    if warm is not None:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr - progress * (lr - min_lr)


def wsd_lr(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_fraction: float = 0.2,
) -> float:
    """Warmup-stable-decay: warmup, hold ``lr``, then decay linearly to ``min_lr`` over the last
    ``decay_fraction`` of ``total_steps``. The long flat stretch lets a run be extended from any
    stable-phase checkpoint by just adding a decay (Hägele et al. 2024, MiniCPM)."""
    warm = _warmup(step, lr, warmup_steps)
    if warm is not None:
        return warm
    decay_steps = round(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    return lr - progress * (lr - min_lr)


def scheduled_lr(
    schedule: str,
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_fraction: float = 0.2,
) -> float:
    """The lr of ``schedule`` (one of SCHEDULES) at ``step`` (0-based, before the step)."""
    kw: dict[str, Any] = {
        "lr": lr,
        "min_lr": min_lr,
        "warmup_steps": warmup_steps,
        "total_steps": total_steps,
    }
    if schedule == "cosine":
        return cosine_lr(step, **kw)
    if schedule == "linear":
        return linear_lr(step, **kw)
    if schedule == "wsd":
        return wsd_lr(step, **kw, decay_fraction=decay_fraction)
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")

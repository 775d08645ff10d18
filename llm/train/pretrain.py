"""Pretraining: the Trainer (``llm.train.trainer``) on token shards with the next-token loss.

The batch source is ``TrainBatches`` (random windows of the train split, dealt to ranks), or
``MixtureBatches`` when the run mixes the split's sources in given shares; the loss is
``next_token_loss`` and validation is ``evaluate_loss`` on the val split.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.model.gpt import GPT
from llm.model.sizing import count_parameters
from llm.tokenizer.bpe import MASK_TOKEN, load_tokenizer, sentinel_token
from llm.train.checkpoint.location import best_of
from llm.train.config import OBJECTIVES, TrainConfig
from llm.train.data import MixtureBatches, TokenShards, TrainBatches, val_batches
from llm.train.objectives import (
    MaskedLMBatches,
    SpanCorruptionBatches,
    next_token_loss,
    span_corruption_loss,
)
from llm.train.trainer import CheckpointFn, LogFn, Objective, Task, Trainer

__all__ = ["LogFn", "TrainConfig", "evaluate_loss", "train", "validation_loss"]


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    shards: TokenShards,
    *,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss over the split's windows (all of them unless capped)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i, (x, y) in enumerate(val_batches(shards, batch_size=batch_size, seq_len=seq_len)):
        if max_batches is not None and i >= max_batches:
            break
        _, loss = model(x.to(device), y.to(device))
        total += float(loss) * y.numel()
        tokens += y.numel()
    model.train(was_training)
    if tokens == 0:
        raise ValueError(
            f"{shards.directory}: split {shards.split!r} has no window of "
            f"{seq_len + 1} tokens to evaluate on"
        )
    loss = total / tokens
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": float(tokens)}


def _open_shards(
    data_dir: Path, seq_len: int, vocab_size: int, verify: bool = True
) -> tuple[TokenShards, TokenShards]:
    """The train and val splits, checked against the run before the first step."""
    train = TokenShards(data_dir, "train", verify=verify)
    val = TokenShards(data_dir, "val", verify=False)
    if int(val.window_starts(seq_len + 1)[-1]) == 0:
        raise ValueError(
            f"{data_dir}: the val split has no window of {seq_len + 1} "
            "tokens; raise the tokenize job's val_fraction or add data"
        )
    if train.vocab_size != vocab_size:
        raise ValueError(
            f"{data_dir}: vocab_size {train.vocab_size} does not match "
            f"the model's vocab_size {vocab_size}"
        )
    return train, val


def pretraining(
    cfg: TrainConfig,
    model_config: ModelConfig,
    data_dir: Path,
    verify: bool = True,
    mixture: Mapping[str, float] | None = None,
) -> Task:
    """The Task that trains ``model_config.arch`` on data_dir's token shards (checked against
    their manifest's hashes unless ``verify`` is off: a node's cache checked them once
    already): a decoder by next-token prediction, an encoder by masked LM, an encoder-decoder
    by span corruption (``llm.train.objectives``); with a ``mixture`` (source -> share,
    ``llm.train.mixture``), each source gives its share of the windows."""
    own = OBJECTIVES[model_config.arch]
    if cfg.objective not in (None, own):
        raise ValueError(
            f"TrainConfig.objective {cfg.objective!r} does not fit ModelConfig.arch "
            f"{model_config.arch!r}, which trains on {own!r}"
        )
    seq_len = cfg.seq_len or model_config.block_size
    train_split, val_split = _open_shards(data_dir, seq_len, model_config.vocab, verify)
    if model_config.arch != "decoder":
        return _noised_pretraining(
            cfg, model_config, data_dir, (train_split, val_split), seq_len, mixture
        )

    def evaluate(model: nn.Module) -> dict[str, float]:
        return evaluate_loss(
            model,
            val_split,
            batch_size=cfg.batch_size,
            seq_len=seq_len,
            max_batches=cfg.eval_batches,
        )

    return Task(
        build_model=lambda device: GPT(model_config).to(device),
        build_batches=lambda rank, world_size: _window_batches(
            train_split, cfg, seq_len, rank, world_size, mixture
        ),
        objective=next_token_loss,
        seq_len=seq_len,
        evaluate=evaluate,
    )


def _window_batches(
    split: TokenShards,
    cfg: TrainConfig,
    seq_len: int,
    rank: int,
    world_size: int,
    mixture: Mapping[str, float] | None,
) -> TrainBatches | MixtureBatches:
    window = {"batch_size": cfg.batch_size, "seq_len": seq_len, "seed": cfg.seed}
    if mixture is None:
        return TrainBatches(split, rank=rank, world_size=world_size, **window)
    return MixtureBatches(split.by_source(), mixture, rank=rank, world_size=world_size, **window)


def _noised_pretraining(
    cfg: TrainConfig,
    model_config: ModelConfig,
    data_dir: Path,
    splits: tuple[TokenShards, TokenShards],
    seq_len: int,
    mixture: Mapping[str, float] | None,
) -> Task:
    """Masked LM for an encoder, span corruption for an encoder-decoder. Validation scores the
    same objective on the val split's first ``eval_batches`` noised batches, the noise drawn
    from a fixed seed so every evaluation sees the same batches (of all sources, unmixed)."""
    train_split, val_split = splits
    tokenizer = load_tokenizer(data_dir / train_split.manifest["tokenizer"]["file"])
    arch = model_config.arch

    def batches(
        split: TokenShards, rank: int, world_size: int, mix: Mapping[str, float] | None
    ) -> Any:
        return noised_batches(
            cfg, arch, split, tokenizer, seq_len, rank, world_size, data_dir, mixture=mix
        )

    objective = next_token_loss if arch == "encoder" else span_corruption_loss
    batches(val_split, 0, 1, None)  # a tokenizer without the tokens fails before step 1

    def evaluate(model: nn.Module) -> dict[str, float]:
        return objective_loss(model, batches(val_split, 0, 1, None), objective, cfg.eval_batches)

    return Task(
        # the Trainer uses what the three model classes share: config, blocks, forward(x, y)
        build_model=lambda device: cast(GPT, build_model(model_config).to(device)),
        build_batches=lambda rank, world_size: batches(train_split, rank, world_size, mixture),
        objective=objective,
        seq_len=seq_len if model_config.arch == "encoder" else None,
        evaluate=evaluate,
    )


def noised_batches(
    cfg: TrainConfig,
    arch: str,
    split: TokenShards,
    tokenizer: Any,
    seq_len: int,
    rank: int,
    world_size: int,
    data_dir: Path,
    *,
    mixture: Mapping[str, float] | None = None,
) -> MaskedLMBatches | SpanCorruptionBatches:
    """The noised batches arch trains on (masked LM or span corruption), cfg's settings and
    seed, over a mixture of the split's sources if given; data_dir names the shards in
    errors."""
    if arch == "encoder":
        return MaskedLMBatches(
            split,
            batch_size=cfg.batch_size,
            seq_len=seq_len,
            mask_id=_special_id(tokenizer, MASK_TOKEN, arch, data_dir),
            mask_prob=cfg.mask_prob,
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
            mixture=mixture,
        )
    return SpanCorruptionBatches(
        split,
        batch_size=cfg.batch_size,
        raw_len=seq_len,
        sentinel_ids=_sentinel_ids(tokenizer),
        noise_density=cfg.noise_density,
        mean_span=cfg.mean_span,
        rank=rank,
        world_size=world_size,
        seed=cfg.seed,
        mixture=mixture,
    )


@torch.no_grad()
def objective_loss(
    model: nn.Module, batches: Iterator[Any], objective: Objective, max_batches: int
) -> dict[str, float]:
    """The objective's token-weighted mean loss over the first max_batches batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in itertools.islice(batches, max_batches):
        batch_loss, count = objective(model, batch, device)
        total, tokens = total + float(batch_loss) * count, tokens + count
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": tokens}


# the objective's settings a checkpoint's train_config may hold (else TrainConfig's defaults)
_NOISE_SETTINGS = ("seed", "seq_len", "mask_prob", "noise_density", "mean_span")


def validation_loss(
    model: nn.Module,
    data_dir: str | Path,
    *,
    batch_size: int,
    max_batches: int | None = None,
    train_config: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """The val split's loss on the model's own objective (``OBJECTIVES``), as training
    validates, for any checkpoint's model: a decoder's next-token loss over every window (or
    the first max_batches batches); an encoder's masked-LM or an encoder-decoder's
    span-corruption loss over one shuffled pass of the val windows (or max_batches batches),
    the noise drawn with the seed, sequence length and masking settings of ``train_config``
    (the checkpoint's trainer_state "train_config"), TrainConfig's defaults where it has none
    (mask_prob 0.15, seed 0), so every evaluation of a checkpoint scores the same batches.
    The result names the objective and, for the noised ones, the settings used."""
    config: ModelConfig = model.config  # type: ignore[assignment]
    data_dir = Path(data_dir)
    val = TokenShards(data_dir, "val", verify=verify)
    if val.vocab_size != config.vocab:
        raise ValueError(
            f"{data_dir}: vocab_size {val.vocab_size} does not match the model's {config.vocab}"
        )
    objective = OBJECTIVES[config.arch]
    if config.arch == "decoder":
        metrics = evaluate_loss(
            model, val, batch_size=batch_size, seq_len=config.block_size, max_batches=max_batches
        )
        return {**metrics, "objective": objective}
    saved = {k: v for k, v in (train_config or {}).items() if k in _NOISE_SETTINGS}
    cfg = TrainConfig(batch_size=batch_size, **saved)
    seq_len = min(cfg.seq_len or config.block_size, config.block_size)
    tokenizer = load_tokenizer(data_dir / val.manifest["tokenizer"]["file"])
    batches = noised_batches(cfg, config.arch, val, tokenizer, seq_len, 0, 1, data_dir)
    assert isinstance(batches.windows, TrainBatches)  # no mixture: one pass over val
    per_pass = batches.windows.batches_per_epoch
    count = per_pass if max_batches is None else min(max_batches, per_pass)
    loss_fn = next_token_loss if config.arch == "encoder" else span_corruption_loss
    metrics = objective_loss(model, batches, loss_fn, count)
    settings: dict[str, float] = {"seed": cfg.seed, "seq_len": seq_len, "batches": count}
    if config.arch == "encoder":
        settings["mask_prob"] = cfg.mask_prob
    else:
        settings |= {"noise_density": cfg.noise_density, "mean_span": cfg.mean_span}
    return {**metrics, "objective": objective, "objective_settings": settings}


def _special_id(tokenizer: Any, token: str, arch: str, data_dir: Path) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(
            f"{data_dir}: arch {arch!r} needs {token} in the tokenizer: tokenize with "
            f"special_tokens including it"
        )
    return int(found)


def _sentinel_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's span sentinels, <|sentinel_0|>, <|sentinel_1|>, … in order."""
    ids: list[int] = []
    while (found := tokenizer.token_to_id(sentinel_token(len(ids)))) is not None:
        ids.append(int(found))
    return ids


def train(
    cfg: TrainConfig,
    model_config: ModelConfig,
    data_dir: str | Path,
    out: str | Path,
    *,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
    on_eval: LogFn | None = None,
    verify_shards: bool = True,
    mixture: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Train until ``cfg.steps`` on the local shard folder ``data_dir``, writing to ``out`` (a
    path or URI); ``on_log`` gets metrics on rank 0, ``on_checkpoint`` and ``on_eval`` (after
    each evaluation) on all. With a ``mixture`` (source -> share), the summary's ``mixture``
    holds what each source gave."""
    cfg = replace(cfg, seq_len=cfg.seq_len or model_config.block_size)
    task = pretraining(cfg, model_config, Path(data_dir), verify=verify_shards, mixture=mixture)
    trainer = Trainer(cfg, task, out)
    history = trainer.fit(on_log=on_log, on_checkpoint=on_checkpoint, on_eval=on_eval)
    final = trainer.checkpoints.latest_location()
    windows = getattr(trainer.batches, "windows", trainer.batches)  # a noised source wraps them
    return {
        "mixture": windows.usage() if isinstance(windows, MixtureBatches) else None,
        "steps": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "loss_history": [loss for _, loss in history],
        "last": trainer.last,
        "checkpoint": final,
        "best_checkpoint": best_of(trainer.checkpoints.uri),
        "parameters": count_parameters(model_config),
    }

"""Supervised fine-tuning: full-parameter training of a checkpoint on tokenized instructions.

The pieces are llm.train's (AdamW with decay on matrices only, warmup + cosine schedules, global
norm clipping, autocast, DDP via parallelize, the checkpoint format); the loop differs from
pretraining in its data (variable-length examples, loss only on IGNORE_INDEX-free targets) and
its start (weights from a base checkpoint). Checkpoints go to ``out_dir/checkpoints`` in the same
format as pretraining's, so evaluate, generate and the HF export read them, and a restarted run
resumes from the latest one: weights, optimizer, loader position, RNG, loss scaler.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llm.finetune.batches import SFTBatches, batches_per_epoch, in_order
from llm.finetune.data import IGNORE_INDEX, TokenizedSet
from llm.model import GPT, ModelConfig
from llm.train.checkpoint import (
    Retention,
    best_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
    step_dir,
)
from llm.train.config import PRECISIONS
from llm.train.optim import SCHEDULES, build_optimizer, scheduled_lr
from llm.train.parallel import clip_grad_norm, parallelize, pick_device
from llm.train.precision import autocast, grad_scaler, load_scaler_state, scaler_state

LogFn = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[int, Path | None, dict[str, float]], None]


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int
    batch_size: int = 8  # examples per rank per step
    lr: float = 1e-4  # fine-tuning moves far less than pretraining: 10-30x lower peak
    min_lr: float = 1e-5
    warmup_steps: int = 10
    schedule: str = "cosine"  # one of llm.train.optim.SCHEDULES
    weight_decay: float = 0.0  # Alpaca and most SFT recipes use none
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    dropout: float | None = None  # None keeps the checkpoint's dropout
    precision: str = "fp32"  # autocast dtype; master weights stay fp32
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    checkpoint_every: int = 100
    keep_last: int | None = None  # None keeps every checkpoint; else the newest K plus the best


def check_finetune_config(cfg: FinetuneConfig, device: torch.device) -> None:
    """Raise ValueError on a setting the run cannot honour, before any weight is loaded."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA GPU, this run is on {device.type}")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"need 0 <= min_lr <= lr, got min_lr {cfg.min_lr}, lr {cfg.lr}")
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.keep_last is not None and cfg.keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 or None, got {cfg.keep_last}")


def tuned_config(base: ModelConfig, dropout: float | None) -> ModelConfig:
    """The base config, with every dropout site set to ``dropout`` when one is given."""
    if dropout is None:
        return base
    return dataclasses.replace(
        base, dropout=dropout, embd_dropout=None, attn_dropout=None, resid_dropout=None
    )


def load_base(checkpoint: str | Path, dropout: float | None, device: torch.device) -> GPT:
    """The base checkpoint's weights in a GPT whose config carries the fine-tuning dropout."""
    base = load_model(checkpoint, device=str(device))
    config = tuned_config(base.config, dropout)
    if config == base.config:
        return base.train()
    model = GPT(config).to(device)
    model.load_state_dict(base.state_dict())
    return model.train()


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _decode_rng(text: str) -> torch.Tensor:
    return torch.ByteTensor(list(base64.b64decode(text)))


@torch.no_grad()
def evaluate_sft_loss(
    model: nn.Module, data: TokenizedSet, *, batch_size: int, pad_id: int
) -> dict[str, float]:
    """Mean loss over every target token of data (not a mean of per-batch means)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in in_order(data, batch_size, pad_id):
        logits, _ = model(batch.input_ids.to(device))
        targets = batch.targets.to(device)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("the validation set has no target token")
    loss_value = total / count
    return {"val_loss": loss_value, "val_ppl": math.exp(min(loss_value, 50.0))}


class _Run:
    """One rank's fine-tuning state."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        base_checkpoint: Path,
        train: TokenizedSet,
        out_dir: Path,
        pad_id: int,
    ) -> None:
        self.cfg, self.out_dir, self.pad_id = cfg, out_dir, pad_id
        self.rank, self.world_size = _distributed()
        self.device = pick_device()
        check_finetune_config(cfg, self.device)
        torch.manual_seed(cfg.seed)
        self.model = load_base(base_checkpoint, cfg.dropout, self.device)
        self.base_checkpoint = base_checkpoint
        self.data_fingerprint = train.fingerprint()
        self.batches = SFTBatches(
            train,
            batch_size=cfg.batch_size,
            pad_id=pad_id,
            rank=self.rank,
            world_size=self.world_size,
            seed=cfg.seed,
        )
        self.wrapped = parallelize(
            self.model,
            parallelism="ddp",
            world_size=self.world_size,
            activation_checkpointing=False,
            compile_model=False,
        )
        self.optimizer = build_optimizer(
            self.model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)
        )
        self.scaler = grad_scaler(cfg.precision, self.device)
        self.step, self.tokens_seen, self.skipped = 0, 0, 0
        self.best: dict[str, Any] | None = None
        latest = latest_checkpoint(out_dir / "checkpoints")
        if latest is not None:
            self._restore(latest)

    def _restore(self, path: Path) -> None:
        _, state = load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        saved = state.get("finetune", {})
        if saved.get("data") != self.data_fingerprint:
            raise ValueError(
                f"{path} was fine-tuned on other training data (or another template, seed or "
                "split); resume with the same data and options, or write to a new output"
            )
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.skipped, self.best = saved.get("skipped_steps", 0), state.get("best")
        self.batches.load_state_dict(
            dict(state["loader"], rank=self.rank, world_size=self.world_size)
        )
        torch.set_rng_state(_decode_rng(state["torch_rng"]))
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(_decode_rng(state["cuda_rng"]), self.device)
        load_scaler_state(self.scaler, state.get("grad_scaler"))

    def _trainer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loader": self.batches.state_dict(),
            "finetune": {
                "base_checkpoint": str(self.base_checkpoint),
                "data": self.data_fingerprint,
                "config": asdict(self.cfg),
                "skipped_steps": self.skipped,
            },
            "torch_rng": _encode_rng(torch.get_rng_state()),
            "grad_scaler": scaler_state(self.scaler),
            "best": self.best,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = _encode_rng(torch.cuda.get_rng_state(self.device))
        return state

    def save(self, val_loss: float | None) -> Path | None:
        """Rank 0 writes; all ranks wait for it. Prunes to keep_last plus the best."""
        root = self.out_dir / "checkpoints"
        if val_loss is not None and (self.best is None or val_loss < self.best["val_loss"]):
            self.best = {"step": self.step, "val_loss": val_loss}
        path = None
        if self.rank == 0:
            path = save_checkpoint(
                step_dir(root, self.step),
                model=self.model,
                config=self.model.config,
                optimizer=self.optimizer,
                trainer_state=self._trainer_state(),
            )
            Retention(self.cfg.keep_last).after_save(root, self.step, self.best)
        if self.world_size > 1:
            dist.barrier()
        return path

    def _reduce(self, loss: torch.Tensor, tokens: int) -> tuple[float, int]:
        """The mean of the ranks' losses (what DDP's averaged gradient follows) and all tokens."""
        both = torch.stack(
            [loss.double(), torch.tensor(float(tokens), dtype=torch.float64, device=loss.device)]
        )
        if self.world_size > 1:
            dist.all_reduce(both)
        return float(both[0]) / self.world_size, int(both[1])

    def train_step(self) -> tuple[float, float, int]:
        cfg = self.cfg
        lr = scheduled_lr(
            cfg.schedule,
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        batch = next(self.batches)
        x, y = batch.input_ids.to(self.device), batch.targets.to(self.device)
        with autocast(cfg.precision, self.device):
            _, loss = self.wrapped(x, y)  # llm.model's loss ignores IGNORE_INDEX targets
        assert loss is not None
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        mean_loss, tokens = self._reduce(loss.detach(), batch.tokens)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if self.scaler:  # it skips an overflowing step by itself and lowers the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif math.isfinite(mean_loss) and math.isfinite(grad_norm):
            self.optimizer.step()
        else:  # every rank sees the same reduced loss, so all skip together
            self.skipped += 1
        self.step += 1
        self.tokens_seen += tokens
        return mean_loss, grad_norm, tokens


def finetune(
    cfg: FinetuneConfig,
    base_checkpoint: str | Path,
    train: TokenizedSet,
    val: TokenizedSet,
    out_dir: str | Path,
    *,
    pad_id: int,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
) -> dict[str, Any]:
    """Fine-tune until cfg.steps; on_log gets metrics on rank 0, on_checkpoint on every rank.

    A fresh run first logs the base model's val_loss at step 0, the figure tuning improves on.
    """
    run = _Run(cfg, Path(base_checkpoint), train, Path(out_dir), pad_id)
    per_epoch = batches_per_epoch(len(train), cfg.batch_size, run.world_size)
    history: dict[int, float] = {}
    last: dict[str, float] = {}
    if run.step == 0 and len(val) and run.rank == 0 and on_log:
        on_log(0, _validate(run, val))
    tick, tokens = time.perf_counter(), 0
    while run.step < cfg.steps:
        loss, grad_norm, step_tokens = run.train_step()
        tokens += step_tokens
        end = run.step == cfg.steps
        evaluated = len(val) > 0 and (run.step % cfg.eval_every == 0 or end)
        if evaluated or run.step % cfg.log_every == 0 or end:
            last = _metrics(run, loss, grad_norm, tokens / (time.perf_counter() - tick), per_epoch)
            history[run.step] = loss
            if evaluated and run.rank == 0:
                last.update(_validate(run, val))
            if run.rank == 0 and on_log:
                on_log(run.step, last)
            tick, tokens = time.perf_counter(), 0
        if run.step % cfg.checkpoint_every == 0 or end:
            path = run.save(last.get("val_loss") if evaluated else None)
            if on_checkpoint:
                on_checkpoint(run.step, path, last)
    final = latest_checkpoint(run.out_dir / "checkpoints")
    return {
        "steps": run.step,
        "tokens_seen": run.tokens_seen,
        "loss_history": history,
        "last": last,
        "checkpoint": str(final) if final else None,
        "best_checkpoint": best_checkpoint(run.out_dir / "checkpoints"),
        "parameters": run.model.num_parameters(),
        "epochs": run.step / per_epoch,
    }


def _metrics(
    run: _Run, loss: float, grad_norm: float, tokens_per_s: float, per_epoch: int
) -> dict[str, float]:
    return {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": run.optimizer.param_groups[0]["lr"],
        "tokens_per_s": tokens_per_s,
        "tokens_seen": float(run.tokens_seen),
        "epoch": run.step / per_epoch,
        "skipped_steps": float(run.skipped),
    }


def _validate(run: _Run, val: TokenizedSet) -> dict[str, float]:
    # rank 0 only, on the bare model: a forward through DDP outside the step would expect a
    # backward on every rank
    with autocast(run.cfg.precision, run.device):
        return evaluate_sft_loss(run.model, val, batch_size=run.cfg.batch_size, pad_id=run.pad_id)

"""One training loop for causal LM, in a single process or under torch.distributed (DDP).

Whoever launches it (a test, ``ray_jobs.train`` on Ray Train, torchrun) initialises the process
group; the loop only asks for rank and world size. Checkpoints go to ``out_dir/checkpoints`` and a
restarted run resumes from the latest one by itself: model, optimizer, loader position, RNG.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llm.model import GPT, ModelConfig
from llm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, step_dir
from llm.train.data import TokenShards, TrainBatches, val_batches
from llm.train.optim import build_optimizer, cosine_lr

LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 100


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across_ranks(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size


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
    total, tokens = 0.0, 0
    for i, (x, y) in enumerate(val_batches(shards, batch_size=batch_size, seq_len=seq_len)):
        if max_batches is not None and i >= max_batches:
            break
        _, loss = model(x, y)
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


class _Run:
    """State of one training run on one rank."""

    def __init__(
        self, cfg: TrainConfig, model_config: ModelConfig, data_dir: Path, out_dir: Path
    ) -> None:
        self.cfg, self.out_dir = cfg, out_dir
        self.rank, self.world_size = _distributed()
        torch.manual_seed(cfg.seed)
        self.model = GPT(model_config)
        self.model_config = model_config
        self.optimizer = build_optimizer(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.shards = TokenShards(data_dir, "train")
        self.val = TokenShards(data_dir, "val", verify=False)
        if int(self.val.window_starts(cfg.seq_len + 1)[-1]) == 0:
            raise ValueError(
                f"{data_dir}: the val split has no window of {cfg.seq_len + 1} "
                "tokens; raise the tokenize job's val_fraction or add data"
            )
        if self.shards.vocab_size != model_config.vocab_size:
            raise ValueError(
                f"{data_dir}: vocab_size {self.shards.vocab_size} does not match "
                f"the model's vocab_size {model_config.vocab_size}"
            )
        self.batches = TrainBatches(
            self.shards,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            rank=self.rank,
            world_size=self.world_size,
            seed=cfg.seed,
        )
        self.step = 0
        self.tokens_seen = 0
        self._resume()
        self.ddp: nn.Module = (
            DistributedDataParallel(self.model) if self.world_size > 1 else self.model
        )

    def _resume(self) -> None:
        latest = latest_checkpoint(self.out_dir / "checkpoints")
        if latest is None:
            return
        _, state = load_checkpoint(latest, model=self.model, optimizer=self.optimizer)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        loader = dict(state["loader"], rank=self.rank, world_size=self.world_size)
        self.batches.load_state_dict(loader)
        torch.set_rng_state(torch.ByteTensor(list(base64.b64decode(state["torch_rng"]))))

    def save(self) -> Path | None:
        path = None
        if self.rank == 0:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "loader": self.batches.state_dict(),
                "train_config": asdict(self.cfg),
                "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            }
            path = save_checkpoint(
                step_dir(self.out_dir / "checkpoints", self.step),
                model=self.model,
                config=self.model_config,
                optimizer=self.optimizer,
                trainer_state=state,
            )
        if self.world_size > 1:
            dist.barrier()
        return path

    def train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        lr = cosine_lr(
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = next(self.batches)
        _, loss = self.ddp(x, y)
        assert loss is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += x.numel() * self.world_size
        return float(loss.detach()), grad_norm


def train(
    cfg: TrainConfig,
    model_config: ModelConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    on_log: LogFn | None = None,
    on_checkpoint: Callable[[int, Path | None, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train until ``cfg.steps``; ``on_log`` gets metrics on rank 0, ``on_checkpoint`` on all."""
    run = _Run(cfg, model_config, Path(data_dir), Path(out_dir))
    history: list[float] = []
    last: dict[str, float] = {}
    tick, tick_step = time.perf_counter(), run.step
    while run.step < cfg.steps:
        loss, grad_norm = run.train_step()
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            elapsed = time.perf_counter() - tick
            tokens = (run.step - tick_step) * cfg.batch_size * cfg.seq_len * run.world_size
            last = {
                "loss": _mean_across_ranks(loss, run.world_size),
                "grad_norm": grad_norm,
                "lr": run.optimizer.param_groups[0]["lr"],
                "tokens_per_s": tokens / max(elapsed, 1e-9),
                "tokens_seen": float(run.tokens_seen),
            }
            history.append(last["loss"])
            if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
                last.update(_eval_on_rank0(run))
            if run.rank == 0 and on_log:
                on_log(run.step, last)
            tick, tick_step = time.perf_counter(), run.step
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
            path = run.save()
            if on_checkpoint:
                on_checkpoint(run.step, path, last)
    final = latest_checkpoint(run.out_dir / "checkpoints")
    return {
        "steps": run.step,
        "tokens_seen": run.tokens_seen,
        "loss_history": history,
        "last": last,
        "checkpoint": str(final) if final else None,
        "parameters": run.model.num_parameters(),
    }


def _eval_on_rank0(run: _Run) -> dict[str, float]:
    result: dict[str, float] = {}
    if run.rank == 0:
        result = evaluate_loss(
            run.model,
            run.val,
            batch_size=run.cfg.batch_size,
            seq_len=run.cfg.seq_len,
            max_batches=run.cfg.eval_batches,
        )
    return result

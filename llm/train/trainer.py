"""The one training engine, in a single process or under torch.distributed (DDP, FSDP2).

The Trainer owns what every kind of training shares: the device, parallelism, optimizer and lr
schedule, precision, the NaN/spike guard and roll-back, RNG, checkpoints (save, resume,
retention) and metrics. What differs between kinds is plugged in as a ``Task``: the model, the
batch source, the loss (``Objective``) and the validation. Pretraining (``llm.train.pretrain``)
and supervised fine-tuning (``llm.finetune.sft``) are two such tasks.

Whoever launches it (a test, Ray Train, torchrun) initialises the process group; the trainer only
asks for rank and world size. Checkpoints go to ``<out>/checkpoints`` (a local path or an
``s3://`` URI, see ``llm.train.checkpoint.location``) and a restarted run resumes from the latest
one by itself, on any node: model, optimizer, loss scaler, loader position, RNG and guard state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from llm import storage
from llm.model.gpt import GPT
from llm.model.sizing import flops_per_token
from llm.train import rng
from llm.train.checkpoint import (
    Retention,
    layout_for,
    read_state,
    restore,
    save,
    step_dir,
)
from llm.train.checkpoint.location import Checkpoints
from llm.train.config import TrainConfig, check_config
from llm.train.guard import SpikeGuard
from llm.train.metrics import TensorBoard, device_peak_flops, mfu, peak_memory_gb
from llm.train.optim import build_optimizer, scheduled_lr
from llm.train.parallel import clip_grad_norm, parallelize, pick_device, sync_gradients
from llm.train.precision import autocast, grad_scaler, load_scaler_state, scaler_state

LogFn = Callable[[int, dict[str, float]], None]
CheckpointFn = Callable[[int, Path | None, dict[str, float]], None]


class Batches(Protocol):
    """An endless batch source whose position a checkpoint saves and restores."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Objective(Protocol):
    """The loss plug-in: the mean loss over a batch's trained tokens, and how many there are."""

    def __call__(
        self, model: nn.Module, batch: Any, device: torch.device
    ) -> tuple[torch.Tensor, int]: ...


@dataclass
class Task:
    """What one kind of training plugs into the Trainer."""

    build_model: Callable[[torch.device], GPT]  # called right after seeding torch
    build_batches: Callable[[int, int], Batches]  # (rank, world_size) -> this rank's batches
    objective: Objective
    seq_len: int | None  # tokens per sequence, for global_batch_tokens; None: they vary
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None  # None: no validation
    state: dict[str, Any] = field(default_factory=dict)  # saved into every trainer_state
    check_resume: Callable[[Path, dict[str, Any]], None] | None = None  # before a resume
    # (step, world_size) -> metrics of this kind of training beside the common ones
    extra_metrics: Callable[[int, int], dict[str, float]] | None = None


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """One rank's training run."""

    def __init__(self, cfg: TrainConfig, task: Task, out: str | Path) -> None:
        self.cfg, self.task, self.out = cfg, task, str(out)
        self.rank, self.world_size = _distributed()
        self.checkpoints = Checkpoints(
            storage.join(self.out, "checkpoints"),
            rank=self.rank,
            retention=Retention(cfg.keep_last),
        )
        self.root = self.checkpoints.root  # where this rank writes checkpoints
        self.device = pick_device()
        self.micro_steps = check_config(
            cfg, seq_len=task.seq_len, world_size=self.world_size, device=self.device
        )
        self.fsdp = cfg.parallelism == "fsdp"
        torch.manual_seed(cfg.seed)
        self.model = task.build_model(self.device)
        self.peak_flops = device_peak_flops(self.device, cfg.peak_flops)
        self.batches = task.build_batches(self.rank, self.world_size)
        self.wrapped = parallelize(
            self.model,
            parallelism=cfg.parallelism,
            world_size=self.world_size,
            activation_checkpointing=cfg.activation_checkpointing,
            compile_model=cfg.compile,
        )
        self.optimizer = self._make_optimizer(self.model)
        self.scaler = grad_scaler(cfg.precision, self.device)
        self.guard = SpikeGuard(cfg.spike_factor, cfg.max_consecutive_spikes)
        self.step = 0
        self.tokens_seen = 0
        self.best: dict[str, Any] | None = None  # {"step", "val_loss"} of the best checkpoint
        self.last: dict[str, float] = {}
        latest = self.checkpoints.latest()
        if latest is not None:
            state = self._restore(latest, loader=True)
            if "guard" in state:
                self.guard.load_state_dict(state["guard"])
            self.best = state.get("best")

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        return build_optimizer(
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            decay_embeddings=cfg.decay_embeddings,
            name=cfg.optimizer,
        )

    def _restore(self, path: Path, *, loader: bool) -> dict[str, Any]:
        """Load model, optimizer, scaler, counters and RNG (and the loader position if asked)."""
        saved = read_state(path)
        optimizer = saved.get("train_config", {}).get("optimizer", "adamw")
        if optimizer != self.cfg.optimizer:
            raise ValueError(
                f"{path}: the checkpoint's optimizer state is {optimizer!r}, but this run asks "
                f"for optimizer {self.cfg.optimizer!r}; resume with {optimizer!r} or start a "
                "new output"
            )
        if self.task.check_resume is not None:
            self.task.check_resume(path, saved)
        state = restore(
            path,
            fsdp=self.fsdp,
            model=self.model,
            config=self.model.config,
            optimizer=self.optimizer,
            make_optimizer=self._make_optimizer,
        )
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        if loader:
            position = dict(state["loader"], rank=self.rank, world_size=self.world_size)
            self.batches.load_state_dict(position)
        rng.restore(state, self.device)
        load_scaler_state(self.scaler, state.get("grad_scaler"))
        return state

    def _trainer_state(self) -> dict[str, Any]:
        return {
            **self.task.state,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loader": self.batches.state_dict(),
            "train_config": asdict(self.cfg),
            **rng.capture(self.device),
            "grad_scaler": scaler_state(self.scaler),
            "guard": self.guard.state_dict(),
            "best": self.best,
        }

    def save(self, val_loss: float | None) -> Path | None:
        """Write this step's checkpoint (collective); val_loss, when measured at this step,
        makes it a candidate for best.json. Then apply the retention policy."""
        if val_loss is not None and (self.best is None or val_loss < self.best["val_loss"]):
            self.best = {"step": self.step, "val_loss": val_loss}
        path = save(
            step_dir(self.root, self.step),
            layout=layout_for(self.cfg.parallelism, self.cfg.fsdp_checkpoint),
            rank=self.rank,
            model=self.model,
            config=self.model.config,
            optimizer=self.optimizer,
            make_optimizer=self._make_optimizer,
            trainer_state=self._trainer_state(),
        )
        self.checkpoints.commit(self.step, self.best)
        if self.world_size > 1:
            dist.barrier()
        # the local folder where it was written in place; one uploaded from staging is gone
        return path if path is not None and path.is_dir() else None

    def roll_back(self) -> None:
        """Return to the last checkpoint after too many skipped steps in a row.

        By default the loader keeps its position, so the batches since the checkpoint are
        skipped rather than replayed: replaying them with the restored RNG would reproduce a
        data-driven spike exactly (PaLM, section 5.1, skips them the same way).
        """
        cfg, latest = self.cfg, self.checkpoints.latest()
        where = f"at step {self.step}: {self.guard.consecutive} steps in a row had a "
        where += "non-finite or spiking loss"
        if latest is None:
            raise RuntimeError(f"{where}, and {self.checkpoints.uri} has no checkpoint")
        if self.guard.rollbacks >= cfg.max_rollbacks:
            raise RuntimeError(f"{where}, after {cfg.max_rollbacks} roll-backs already")
        state = self._restore(latest, loader=not cfg.rollback_skips_data)
        saved = state.get("guard")
        self.guard.ema = saved["ema"] if saved else None
        self.guard.ema_steps = saved["ema_steps"] if saved else 0
        self.guard.consecutive = 0
        self.guard.rollbacks += 1

    def _micro_steps(self) -> tuple[float, int]:
        """Forward and backward over every micro-batch of the step; the mean of the ranks'
        losses (what the averaged gradient follows) and all ranks' tokens.

        Every rank must see the same loss, so that all take the same skip decision. The
        step's loss and tokens are known once the last forward has run, so their all-reduce
        starts there and travels while the last backward computes (waiting for it after the
        backward cost 0.7-3.7% of a 2-rank CPU step). Losses stay on the device until then: one
        host sync per step, so the host queues the next micro-step while the device computes.
        """
        losses: list[torch.Tensor] = []
        tokens = 0
        both = pending = None
        for i in range(self.micro_steps):
            final = i == self.micro_steps - 1
            batch = next(self.batches)
            # no_sync must cover the backward pass, autocast only the forward
            with sync_gradients(self.wrapped, final):
                with autocast(self.cfg.precision, self.device):
                    loss, count = self.task.objective(self.wrapped, batch, self.device)
                losses.append(loss.detach())
                tokens += count
                if final:
                    local = torch.stack(losses).double().sum() / self.micro_steps
                    count_t = torch.tensor(float(tokens), dtype=torch.float64, device=loss.device)
                    both = torch.stack([local, count_t])
                    if self.world_size > 1:
                        pending = dist.all_reduce(both, async_op=True)
                scaled = loss / self.micro_steps if self.micro_steps > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        assert both is not None
        if pending is not None:
            pending.wait()
        return float(both[0]) / self.world_size, int(both[1])

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer step; returns the global loss, the gradient norm and the tokens."""
        cfg = self.cfg
        lr = scheduled_lr(
            cfg.schedule,
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
            decay_fraction=cfg.decay_fraction,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, tokens = self._micro_steps()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        # an fp16 overflow is the GradScaler's to handle: it skips that step and lowers the scale
        if self.guard.accept(loss, grad_norm, check_grad_norm=self.scaler is None):
            if self.scaler:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler:
            self.scaler.update()
        self.step += 1
        self.tokens_seen += tokens
        return loss, grad_norm, tokens

    def evaluate(self) -> dict[str, float]:
        """The task's validation metrics on rank 0 ({} elsewhere, or without validation)."""
        # under FSDP every forward is collective (it all-gathers the shards), so all ranks
        # evaluate; otherwise rank 0 alone, on the bare model: a forward through DDP outside the
        # step would expect a backward on every rank
        if self.task.evaluate is None or (self.rank != 0 and not self.fsdp):
            return {}
        with autocast(self.cfg.precision, self.device):
            result = self.task.evaluate(self.model)
        return result if self.rank == 0 else {}

    def fit(
        self,
        *,
        on_log: LogFn | None = None,
        on_checkpoint: CheckpointFn | None = None,
        on_eval: LogFn | None = None,
    ) -> list[tuple[int, float]]:
        """Train until cfg.steps; on_log gets metrics on rank 0, on_checkpoint on every rank.
        on_eval is called on every rank after each evaluation, before that step's checkpoint
        (validation metrics on rank 0 only): for hooks every rank must call at the same steps,
        such as Ray Train's report. Returns the (step, loss) pairs logged by this call."""
        cfg = self.cfg
        board = None
        # event files are appended to, which object storage cannot do: write them in scratch
        # and upload them when training ends
        remote = storage.is_remote(self.out)
        board_dir = (self.root.parent if remote else Path(self.out)) / "tensorboard"
        if cfg.tensorboard and self.rank == 0:
            board = TensorBoard(board_dir)
        history: list[tuple[int, float]] = []
        tick, tokens = time.perf_counter(), 0
        try:
            while self.step < cfg.steps:
                loss, grad_norm, step_tokens = self.train_step()
                tokens += step_tokens
                if self.guard.must_roll_back:
                    self.roll_back()
                    tick, tokens = time.perf_counter(), 0
                    continue
                end = self.step == cfg.steps
                evaluated = self.task.evaluate is not None and (
                    self.step % cfg.eval_every == 0 or end
                )
                if evaluated or self.step % cfg.log_every == 0 or end:
                    elapsed = max(time.perf_counter() - tick, 1e-9)
                    self.last = self._metrics(loss, grad_norm, tokens / elapsed)
                    history.append((self.step, loss))
                    if evaluated:
                        self.last.update(self.evaluate())
                    if self.rank == 0 and on_log:
                        on_log(self.step, self.last)
                    if evaluated and on_eval:
                        on_eval(self.step, self.last)
                    if board:
                        board.log(self.step, self.last)
                    tick, tokens = time.perf_counter(), 0
                if self.step % cfg.checkpoint_every == 0 or end:
                    path = self.save(self.last.get("val_loss") if evaluated else None)
                    if on_checkpoint:
                        on_checkpoint(self.step, path, self.last)
        finally:
            if board:
                board.close()
                if remote:
                    storage.upload(board_dir, storage.join(self.out, "tensorboard"))
        return history

    def _metrics(self, loss: float, grad_norm: float, tokens_per_s: float) -> dict[str, float]:
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_s": tokens_per_s,
            "tokens_seen": float(self.tokens_seen),
            "skipped_steps": float(self.guard.skipped),
            "rollbacks": float(self.guard.rollbacks),
            "peak_memory_gb": peak_memory_gb(self.device),
        }
        if self.peak_flops is not None:
            peak = self.peak_flops * self.world_size
            # by the config, as every architecture has one (llm.model.sizing, exact for each)
            metrics["mfu"] = mfu(flops_per_token(self.model.config), tokens_per_s, peak)
        if self.task.extra_metrics is not None:
            metrics.update(self.task.extra_metrics(self.step, self.world_size))
        return metrics

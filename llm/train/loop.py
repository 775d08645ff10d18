"""One training loop for causal LM, in a single process or under torch.distributed (DDP, FSDP2).

Whoever launches it (a test, ``ray_jobs.train`` on Ray Train, torchrun) initialises the process
group; the loop only asks for rank and world size. Checkpoints go to ``out_dir/checkpoints`` and a
restarted run resumes from the latest one by itself: model, optimizer, loss scaler, loader
position, RNG, spike-guard state.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llm.model import GPT, ModelConfig
from llm.train.checkpoint import (
    Retention,
    best_checkpoint,
    latest_checkpoint,
    layout_for,
    read_state,
    restore,
    save,
    step_dir,
)
from llm.train.config import TrainConfig, check_config
from llm.train.data import TokenShards, TrainBatches, val_batches
from llm.train.guard import SpikeGuard
from llm.train.metrics import TensorBoard, device_peak_flops, mfu, peak_memory_gb
from llm.train.optim import build_optimizer, scheduled_lr
from llm.train.parallel import clip_grad_norm, parallelize, pick_device, sync_gradients
from llm.train.precision import autocast, grad_scaler, load_scaler_state, scaler_state

__all__ = ["LogFn", "TrainConfig", "evaluate_loss", "train"]

LogFn = Callable[[int, dict[str, float]], None]


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across_ranks(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _decode_rng(text: str) -> torch.Tensor:
    return torch.ByteTensor(list(base64.b64decode(text)))


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


class _Run:
    """State of one training run on one rank."""

    def __init__(
        self, cfg: TrainConfig, model_config: ModelConfig, data_dir: Path, out_dir: Path
    ) -> None:
        self.cfg, self.out_dir = cfg, out_dir
        self.rank, self.world_size = _distributed()
        self.device = pick_device()
        self.micro_steps = check_config(cfg, world_size=self.world_size, device=self.device)
        self.fsdp = cfg.parallelism == "fsdp"
        torch.manual_seed(cfg.seed)
        self.model = GPT(model_config).to(self.device)
        self.model_config = model_config
        self.flops_per_token = self.model.flops_per_token()
        self.peak_flops = device_peak_flops(self.device, cfg.peak_flops)
        self._open_data(data_dir)
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
        latest = latest_checkpoint(self.out_dir / "checkpoints")
        if latest is not None:
            state = self._restore(latest, loader=True)
            if "guard" in state:
                self.guard.load_state_dict(state["guard"])
            self.best = state.get("best")

    def _open_data(self, data_dir: Path) -> None:
        cfg = self.cfg
        self.shards = TokenShards(data_dir, "train")
        self.val = TokenShards(data_dir, "val", verify=False)
        if int(self.val.window_starts(cfg.seq_len + 1)[-1]) == 0:
            raise ValueError(
                f"{data_dir}: the val split has no window of {cfg.seq_len + 1} "
                "tokens; raise the tokenize job's val_fraction or add data"
            )
        if self.shards.vocab_size != self.model_config.vocab_size:
            raise ValueError(
                f"{data_dir}: vocab_size {self.shards.vocab_size} does not match "
                f"the model's vocab_size {self.model_config.vocab_size}"
            )
        self.batches = TrainBatches(
            self.shards,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            rank=self.rank,
            world_size=self.world_size,
            seed=cfg.seed,
        )

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

    def autocast(self) -> Any:
        return autocast(self.cfg.precision, self.device)

    def _restore(self, path: Path, *, loader: bool) -> dict[str, Any]:
        """Load model, optimizer, scaler, counters and RNG (and the loader position if asked)."""
        saved = read_state(path).get("train_config", {}).get("optimizer", "adamw")
        if saved != self.cfg.optimizer:
            raise ValueError(
                f"{path}: the checkpoint's optimizer state is {saved!r}, but this run asks for "
                f"optimizer {self.cfg.optimizer!r}; resume with {saved!r} or start a new output"
            )
        state = restore(
            path,
            fsdp=self.fsdp,
            model=self.model,
            config=self.model_config,
            optimizer=self.optimizer,
            make_optimizer=self._make_optimizer,
        )
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        if loader:
            position = dict(state["loader"], rank=self.rank, world_size=self.world_size)
            self.batches.load_state_dict(position)
        torch.set_rng_state(_decode_rng(state["torch_rng"]))
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(_decode_rng(state["cuda_rng"]), self.device)
        load_scaler_state(self.scaler, state.get("grad_scaler"))
        return state

    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loader": self.batches.state_dict(),
            "train_config": asdict(self.cfg),
            "torch_rng": _encode_rng(torch.get_rng_state()),
            "grad_scaler": scaler_state(self.scaler),
            "guard": self.guard.state_dict(),
            "best": self.best,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = _encode_rng(torch.cuda.get_rng_state(self.device))
        return state

    def save(self, val_loss: float | None) -> Path | None:
        """Write this step's checkpoint (collective); val_loss, when measured at this step,
        makes it a candidate for best.json. Then prune down to keep_last plus the best."""
        root, cfg = self.out_dir / "checkpoints", self.cfg
        if val_loss is not None and (self.best is None or val_loss < self.best["val_loss"]):
            self.best = {"step": self.step, "val_loss": val_loss}
        path = save(
            step_dir(root, self.step),
            layout=layout_for(cfg.parallelism, cfg.fsdp_checkpoint),
            rank=self.rank,
            model=self.model,
            config=self.model_config,
            optimizer=self.optimizer,
            make_optimizer=self._make_optimizer,
            trainer_state=self._trainer_state(),
        )
        if self.rank == 0:
            Retention(cfg.keep_last).after_save(root, self.step, self.best)
        if self.world_size > 1:
            dist.barrier()
        return path

    def roll_back(self) -> None:
        """Return to the last checkpoint after too many skipped steps in a row.

        By default the loader keeps its position, so the batches since the checkpoint are
        skipped rather than replayed: replaying them with the restored RNG would reproduce a
        data-driven spike exactly (PaLM, section 5.1, skips them the same way).
        """
        cfg, latest = self.cfg, latest_checkpoint(self.out_dir / "checkpoints")
        where = f"at step {self.step}: {self.guard.consecutive} steps in a row had a "
        where += "non-finite or spiking loss"
        if latest is None:
            raise RuntimeError(f"{where}, and {self.out_dir / 'checkpoints'} has no checkpoint")
        if self.guard.rollbacks >= cfg.max_rollbacks:
            raise RuntimeError(f"{where}, after {cfg.max_rollbacks} roll-backs already")
        state = self._restore(latest, loader=not cfg.rollback_skips_data)
        saved = state.get("guard")
        self.guard.ema = saved["ema"] if saved else None
        self.guard.ema_steps = saved["ema_steps"] if saved else 0
        self.guard.consecutive = 0
        self.guard.rollbacks += 1

    def _micro_step(self, final: bool) -> torch.Tensor:
        x, y = next(self.batches)
        if self.device.type == "cuda":  # a copy from pinned memory does not block the host
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        # no_sync must cover the backward pass, autocast only the forward
        with sync_gradients(self.wrapped, final):
            with self.autocast():
                _, loss = self.wrapped(x, y)
            assert loss is not None
            scaled = loss / self.micro_steps if self.micro_steps > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach()

    def train_step(self) -> tuple[float, float]:
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
        # losses stay on the device until the step's end: one host sync per step, not per
        # micro-step, so the host queues the next micro-step while the device still computes
        losses = [self._micro_step(i == self.micro_steps - 1) for i in range(self.micro_steps)]
        local = float(torch.stack(losses).double().sum())
        # every rank must see the same loss, so that all take the same skip decision
        loss = _mean_across_ranks(local / self.micro_steps, self.world_size, self.device)
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
        self.tokens_seen += self.micro_steps * cfg.batch_size * cfg.seq_len * self.world_size
        return loss, grad_norm


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
    board = TensorBoard(run.out_dir / "tensorboard") if cfg.tensorboard and run.rank == 0 else None
    history: list[float] = []
    last: dict[str, float] = {}
    tick, tick_step = time.perf_counter(), run.step
    evaluated_at = -1
    try:
        while run.step < cfg.steps:
            loss, grad_norm = run.train_step()
            if run.guard.must_roll_back:
                run.roll_back()
                tick, tick_step = time.perf_counter(), run.step
                continue
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                elapsed = time.perf_counter() - tick
                last = _metrics(run, loss, grad_norm, run.step - tick_step, elapsed)
                history.append(last["loss"])
                if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
                    last.update(_evaluate(run))
                    evaluated_at = run.step
                if run.rank == 0 and on_log:
                    on_log(run.step, last)
                if board:
                    board.log(run.step, last)
                tick, tick_step = time.perf_counter(), run.step
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                path = run.save(last.get("val_loss") if evaluated_at == run.step else None)
                if on_checkpoint:
                    on_checkpoint(run.step, path, last)
    finally:
        if board:
            board.close()
    final = latest_checkpoint(run.out_dir / "checkpoints")
    return {
        "steps": run.step,
        "tokens_seen": run.tokens_seen,
        "loss_history": history,
        "last": last,
        "checkpoint": str(final) if final else None,
        "best_checkpoint": best_checkpoint(run.out_dir / "checkpoints"),
        "parameters": run.model.num_parameters(),
    }


def _metrics(
    run: _Run, loss: float, grad_norm: float, steps: int, elapsed: float
) -> dict[str, float]:
    cfg = run.cfg
    tokens = steps * run.micro_steps * cfg.batch_size * cfg.seq_len * run.world_size
    tokens_per_s = tokens / max(elapsed, 1e-9)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": run.optimizer.param_groups[0]["lr"],
        "tokens_per_s": tokens_per_s,
        "tokens_seen": float(run.tokens_seen),
        "skipped_steps": float(run.guard.skipped),
        "rollbacks": float(run.guard.rollbacks),
        "peak_memory_gb": peak_memory_gb(run.device),
    }
    if run.peak_flops is not None:
        peak = run.peak_flops * run.world_size
        metrics["mfu"] = mfu(run.flops_per_token, tokens_per_s, peak)
    return metrics


def _evaluate(run: _Run) -> dict[str, float]:
    # under FSDP every forward is collective (it all-gathers the shards), so all ranks evaluate
    if run.rank != 0 and not run.fsdp:
        return {}
    with run.autocast():
        result = evaluate_loss(
            run.model,
            run.val,
            batch_size=run.cfg.batch_size,
            seq_len=run.cfg.seq_len,
            max_batches=run.cfg.eval_batches,
        )
    return result if run.rank == 0 else {}

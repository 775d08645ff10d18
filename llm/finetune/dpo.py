"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) on the Trainer.

DPO tunes a policy π from pairs (x, y_w, y_l) where a person preferred y_w to y_l, with no
reward model and no sampling: with h = [log π(y_w|x) - log π_ref(y_w|x)]
- [log π(y_l|x) - log π_ref(y_l|x)], the loss is -log σ(β h). π_ref is the starting
checkpoint, frozen; β sets how far π may move from it (the implicit KL penalty). Each log π(y|x)
is the sum over the response's tokens only, the prompt masked as SFT masks it. Options: cDPO's
label smoothing ε (Mitchell 2023; the loss becomes -(1-ε) log σ(βh) - ε log σ(-βh), for labels
flipped with probability ε) and the reference-free variant (π_ref uniform: its terms are 0).

The loss is written here rather than taken from Hugging Face TRL: TRL's DPOTrainer is built on
transformers' Trainer and models, while llmforge trains its own GPT on its own Trainer; the loss
itself is a few lines. Like SFT (``llm.finetune.sft``), DPO is a ``Task`` of the one Trainer, so
checkpoints, resume, DDP under Ray Train, precision and metrics are pretraining's. Each step runs
the policy once on the batch's chosen and rejected examples stacked together (one forward per
backward, as DDP wants) and the reference once without gradients. The reference is loaded once
per rank, in eval mode, its parameters frozen and outside the optimizer.

Metrics beside the loss, as TRL names them in spirit: ``reward_chosen`` / ``reward_rejected``
(β times the policy-reference log-ratio), ``reward_margin`` (their difference),
``reward_accuracy`` (the fraction of pairs whose chosen reward is strictly higher; 0 at the
start, when policy and reference agree), ``logp_chosen`` / ``logp_rejected`` (the policy's
summed response log-probabilities): means over the pairs since the last log, over all ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llm.finetune.batches import Batch, ShuffledBatches, collate
from llm.finetune.config import DPOConfig
from llm.finetune.data import IGNORE_INDEX
from llm.finetune.preferences import PreferenceSet
from llm.finetune.sft import load_base
from llm.model.gpt import GPT
from llm.train.checkpoint import load_model
from llm.train.checkpoint.location import best_of
from llm.train.config import TrainConfig
from llm.train.trainer import CheckpointFn, LogFn, Task, Trainer

STAT_NAMES = (
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "reward_accuracy",
    "logp_chosen",
    "logp_rejected",
)


class PairBatch(NamedTuple):
    batch: Batch  # 2n rows: the n chosen examples, then their n rejected ones
    pairs: int


def collate_pairs(data: PreferenceSet, indices: list[int], pad_id: int) -> PairBatch:
    rows = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    return PairBatch(collate(rows, pad_id), len(indices))


def pairs_in_order(data: PreferenceSet, batch_size: int, pad_id: int) -> Iterator[PairBatch]:
    """Every pair once, in order (for validation); the last batch may be smaller."""
    for first in range(0, len(data), batch_size):
        yield collate_pairs(data, list(range(first, min(first + batch_size, len(data)))), pad_id)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) targets -> (B,) the sum of log p(target) over the positions
    whose target is not IGNORE_INDEX (the response tokens), in float32."""
    per_token = -F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,  # contributes exactly 0 at prompt and padding positions
        reduction="none",
    )
    return per_token.view(targets.shape).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the (c)DPO loss, and the chosen and rejected rewards (detached)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def frozen_reference(checkpoint: str | Path, device: torch.device) -> GPT:
    """The starting checkpoint as the reference: eval mode (no dropout), no gradients."""
    reference = load_model(checkpoint, device=str(device)).eval()
    reference.requires_grad_(False)
    return reference


class DPOObjective:
    """The Trainer's loss plug-in for DPO, holding the reference model and the metrics' sums."""

    def __init__(self, options: DPOConfig) -> None:
        self.options = options
        self.reference: nn.Module | None = None  # set once the device is known (build_model)
        self.sums: torch.Tensor | None = None  # [pairs, *STAT_NAMES sums] since the last log

    def pair_terms(
        self, model: nn.Module, pairs: PairBatch, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair: loss, chosen and rejected reward, chosen and rejected policy log-prob."""
        ids = pairs.batch.input_ids.to(device)
        targets = pairs.batch.targets.to(device)
        logits, _ = model(ids)
        logps = sequence_logps(logits, targets)
        if self.options.reference_free:
            ref = torch.zeros_like(logps)
        else:
            if self.reference is None:
                raise RuntimeError("the DPO reference model is not loaded")
            with torch.no_grad():
                ref = sequence_logps(self.reference(ids)[0], targets)
        n = pairs.pairs
        losses, chosen, rejected = dpo_loss(
            logps[:n],
            logps[n:],
            ref[:n],
            ref[n:],
            beta=self.options.beta,
            label_smoothing=self.options.label_smoothing,
        )
        return losses, chosen, rejected, logps[:n].detach(), logps[n:].detach()

    def __call__(
        self, model: nn.Module, batch: PairBatch, device: torch.device
    ) -> tuple[torch.Tensor, int]:
        losses, chosen, rejected, logp_chosen, logp_rejected = self.pair_terms(model, batch, device)
        # summed on the device: read (one host sync) only when the Trainer logs
        step = torch.stack(
            [
                torch.tensor(float(batch.pairs), device=device),
                chosen.sum(),
                rejected.sum(),
                (chosen - rejected).sum(),
                (chosen > rejected).float().sum(),
                logp_chosen.sum(),
                logp_rejected.sum(),
            ]
        ).double()
        self.sums = step if self.sums is None else self.sums + step
        return losses.mean(), batch.batch.tokens

    def take_metrics(self, world_size: int) -> dict[str, float]:
        """The means since the last call, over every rank (a collective when world_size > 1:
        the Trainer logs at the same steps on every rank)."""
        sums, self.sums = self.sums, None
        if sums is None:
            return {}
        if world_size > 1:
            dist.all_reduce(sums)
        pairs = float(sums[0])
        return {name: float(v) / pairs for name, v in zip(STAT_NAMES, sums[1:], strict=True)}


@torch.no_grad()
def evaluate_dpo(
    model: nn.Module,
    objective: DPOObjective,
    data: PreferenceSet,
    *,
    batch_size: int,
    pad_id: int,
) -> dict[str, float]:
    """The mean DPO loss, reward accuracy and margin over every pair of data."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64)
    for pairs in pairs_in_order(data, batch_size, pad_id):
        losses, chosen, rejected, _, _ = objective.pair_terms(model, pairs, device)
        margins = (chosen - rejected).double().cpu()
        totals += torch.stack(
            [
                losses.double().sum().cpu(),
                (margins > 0).double().sum(),
                margins.sum(),
                torch.tensor(float(pairs.pairs), dtype=torch.float64),
            ]
        )
    model.train(was_training)
    if totals[3] == 0:
        raise ValueError("the validation set has no pair")
    loss, accuracy, margin, count = (float(v) for v in totals)
    return {
        "val_loss": loss / count,
        "val_reward_accuracy": accuracy / count,
        "val_reward_margin": margin / count,
    }


def preference_tuning(
    cfg: TrainConfig,
    base_checkpoint: Path,
    train: PreferenceSet,
    val: PreferenceSet,
    *,
    pad_id: int,
    options: DPOConfig,
    dropout: float | None,
) -> tuple[Task, DPOObjective]:
    """The Task that tunes base_checkpoint on train's preferences (validating on val, if any).

    ``dropout`` None turns dropout off, as TRL does by default for DPO: the policy's
    log-probabilities are then those of the model that will be used, and at the start policy
    and reference agree exactly (loss log 2).
    """
    fingerprint = train.fingerprint()
    settings = dataclasses.asdict(options)
    objective = DPOObjective(options)

    def build_model(device: torch.device) -> GPT:
        if not options.reference_free:
            objective.reference = frozen_reference(base_checkpoint, device)
        return load_base(base_checkpoint, 0.0 if dropout is None else dropout, device)

    def check_resume(path: Path, saved: dict[str, Any]) -> None:
        tuned = saved.get("finetune", {})
        if tuned.get("data") != fingerprint:
            raise ValueError(
                f"{path} was fine-tuned on other training data (or another method, template, "
                "seed or split); resume with the same data and options, or write to a new output"
            )
        if tuned.get("dpo") != settings:
            raise ValueError(
                f"{path} was tuned with DPO settings {tuned.get('dpo')}, not {settings}; "
                "resume with the same settings, or write to a new output"
            )

    def evaluate(model: nn.Module) -> dict[str, float]:
        return evaluate_dpo(model, objective, val, batch_size=cfg.batch_size, pad_id=pad_id)

    def metrics(step: int, world_size: int) -> dict[str, float]:
        epochs = step / (len(train) // world_size // cfg.batch_size)
        return {"epoch": epochs, **objective.take_metrics(world_size)}

    task = Task(
        build_model=build_model,
        # batch_size counts pairs: a batch holds twice as many sequences
        build_batches=lambda rank, world_size: ShuffledBatches(
            len(train),
            lambda indices: collate_pairs(train, indices, pad_id),
            batch_size=cfg.batch_size,
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
            what="training pairs",
        ),
        objective=objective,
        seq_len=None,
        evaluate=evaluate if len(val) else None,
        state={
            "finetune": {
                "method": "dpo",
                "base_checkpoint": str(base_checkpoint),
                "data": fingerprint,
                "dpo": settings,
            }
        },
        check_resume=check_resume,
        extra_metrics=metrics,
    )
    return task, objective


def dpo_finetune(
    cfg: TrainConfig,
    base_checkpoint: str | Path,
    train: PreferenceSet,
    val: PreferenceSet,
    out: str | Path,
    *,
    pad_id: int,
    options: DPOConfig | None = None,
    dropout: float | None = None,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
) -> dict[str, Any]:
    """Preference-tune until cfg.steps; on_log gets metrics on rank 0, on_checkpoint on every
    rank. A fresh run first logs the base model's validation metrics at step 0 (val_loss is
    log 2 there unless reference_free or dropout is on). Returns SFT's summary with the last
    logged DPO metrics."""
    task, _ = preference_tuning(
        cfg,
        Path(base_checkpoint),
        train,
        val,
        pad_id=pad_id,
        options=options or DPOConfig(),
        dropout=dropout,
    )
    trainer = Trainer(cfg, task, out)
    if trainer.step == 0 and len(val) and trainer.rank == 0 and on_log:
        on_log(0, trainer.evaluate())
    history = trainer.fit(on_log=on_log, on_checkpoint=on_checkpoint)
    per_epoch = len(train) // trainer.world_size // cfg.batch_size
    return {
        "steps": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "loss_history": dict(history),
        "last": trainer.last,
        "checkpoint": trainer.checkpoints.latest_location(),
        "best_checkpoint": best_of(trainer.checkpoints.uri),
        "parameters": trainer.model.num_parameters(),
        "epochs": trainer.step / per_epoch,
    }

"""Classification fine-tuning: a head on an encoder's or decoder's pooled states, trained with
cross-entropy by the one Trainer (``llm.train.trainer``), as supervised fine-tuning is.

So optimizer, schedules, clipping, autocast, DDP/FSDP, the NaN guard, checkpoints and resume are
pretraining's. The model is a ``SequenceClassifier`` (``llm.model.classifier``) around the base
checkpoint's backbone; the batches are labelled sequences right-padded per batch; validation
reports the loss, accuracy and macro-F1 on held-out records. Checkpoints have the usual format,
with the classifier's labels and pooling in trainer_state.json under "classifier":
``load_classifier`` brings one back (``load_model``, which builds language models, refuses it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
from torch import nn

from llm.finetune.batches import ShuffledBatches, batches_per_epoch
from llm.finetune.classify_data import ClassifyData, LabelledSet, encode_texts, pad_id
from llm.finetune.sft import tuned_config
from llm.model.classifier import SequenceClassifier, pooling_for
from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.model.gpt import GPT
from llm.train.checkpoint import (
    CLASSIFIER_KEY,
    CONFIG_FILE,
    load_checkpoint,
    load_model,
    read_state,
)
from llm.train.checkpoint.location import best_of
from llm.train.config import TrainConfig
from llm.train.trainer import CheckpointFn, LogFn, Task, Trainer

STATE_KEY = CLASSIFIER_KEY  # the trainer_state.json section that makes a checkpoint a classifier


@dataclasses.dataclass(frozen=True)
class ClassifierInfo:
    """What a checkpoint must say beside its ModelConfig to be rebuilt as a classifier."""

    labels: tuple[str, ...]  # label names by id
    pooling: str

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "num_labels": self.num_labels, "pooling": self.pooling}

    @classmethod
    def from_json(cls, saved: Any, where: str) -> ClassifierInfo:
        try:
            labels = tuple(str(x) for x in saved["labels"])
            info = cls(labels, str(saved["pooling"]))
        except (TypeError, KeyError) as e:
            raise ValueError(f"{where}: the {STATE_KEY!r} section is malformed ({e!r})") from e
        if info.num_labels != saved.get("num_labels", info.num_labels):
            raise ValueError(f"{where}: num_labels disagrees with the labels it lists")
        return info


class LabelBatch(NamedTuple):
    input_ids: torch.Tensor  # (B, T) int64, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    labels: torch.Tensor  # (B,) label ids
    tokens: int  # real tokens in the batch (for tokens/s)


def collate(rows: Sequence[tuple[np.ndarray | list[int], int]], pad: int) -> LabelBatch:
    width = max(len(ids) for ids, _ in rows)
    input_ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, (ids, _) in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    labels = torch.tensor([label for _, label in rows], dtype=torch.int64)
    return LabelBatch(torch.from_numpy(input_ids), torch.from_numpy(mask), labels, int(mask.sum()))


def classification_loss(
    model: nn.Module, batch: LabelBatch, device: torch.device
) -> tuple[torch.Tensor, int]:
    logits = model(batch.input_ids.to(device), batch.attention_mask.to(device))
    return F.cross_entropy(logits.float(), batch.labels.to(device)), batch.tokens


def accuracy_and_f1(gold: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean of each label's F1, scikit-learn's
    f1_score(average="macro"); a label never gold nor predicted counts as F1 0)."""
    f1s = []
    for label in range(num_labels):
        tp = int(np.sum((predicted == label) & (gold == label)))
        predicted_n, gold_n = int(np.sum(predicted == label)), int(np.sum(gold == label))
        f1s.append(2 * tp / (predicted_n + gold_n) if predicted_n + gold_n else 0.0)
    return {"accuracy": float(np.mean(predicted == gold)), "macro_f1": float(np.mean(f1s))}


@torch.no_grad()
def classify_logits(model: nn.Module, data: LabelledSet, *, batch_size: int, pad: int) -> Any:
    """(N, num_labels) float32 logits of every example, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for first in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(first, min(first + batch_size, len(data)))], pad)
        out.append(model(batch.input_ids.to(device), batch.attention_mask.to(device)).float())
    model.train(was_training)
    return torch.cat(out).cpu()


def evaluate_classifier(
    model: nn.Module, data: LabelledSet, *, batch_size: int, pad: int
) -> dict[str, float]:
    """val_loss (the mean over examples), val_accuracy and val_macro_f1 on data."""
    if len(data) == 0:
        raise ValueError("the validation set is empty")
    logits = classify_logits(model, data, batch_size=batch_size, pad=pad)
    gold = torch.tensor(data.labels)  # a copy: the array may be read-only (shipped by Ray)
    scores = accuracy_and_f1(data.labels, logits.argmax(-1).numpy(), logits.shape[-1])
    return {
        "val_loss": float(F.cross_entropy(logits, gold)),
        **{f"val_{name}": value for name, value in scores.items()},
    }


def build_classifier(
    base_checkpoint: str | Path,
    num_labels: int,
    *,
    pooling: str | None,
    dropout: float | None,
    device: torch.device,
) -> SequenceClassifier:
    """The base checkpoint's backbone (with the fine-tuning dropout) under a new head."""
    base = load_model(base_checkpoint, device=str(device))
    config = tuned_config(base.config, dropout)
    backbone = base if config == base.config else build_model(config).to(device)
    if backbone is not base:
        backbone.load_state_dict(base.state_dict())
    model = SequenceClassifier(cast(GPT, backbone), num_labels, pooling).to(device)
    return model.train()


def classification(
    cfg: TrainConfig,
    base_checkpoint: Path,
    data: ClassifyData,
    *,
    pad: int,
    pooling: str | None,
    dropout: float | None,
) -> Task:
    """The Task that trains a classifier on data.train from base_checkpoint (and validates on
    data.val, if not empty)."""
    fingerprint = data.train.fingerprint()
    arch = ModelConfig.load(Path(base_checkpoint) / CONFIG_FILE).arch
    info = ClassifierInfo(data.labels, pooling_for(arch, pooling))

    def check_resume(path: Path, saved: dict[str, Any]) -> None:
        if saved.get("finetune", {}).get("data") != fingerprint:
            raise ValueError(
                f"{path} was trained on other data (or other labels, fields, seed or split); "
                "resume with the same data and options, or write to a new output"
            )
        if ClassifierInfo.from_json(saved.get(STATE_KEY), str(path)) != info:
            raise ValueError(f"{path} has other labels or another pooling than this run")

    def evaluate(model: nn.Module) -> dict[str, float]:
        return evaluate_classifier(model, data.val, batch_size=cfg.batch_size, pad=pad)

    def epoch(step: int, world_size: int) -> dict[str, float]:
        return {"epoch": step / batches_per_epoch(len(data.train), cfg.batch_size, world_size)}

    def model(device: torch.device) -> GPT:
        built = build_classifier(
            base_checkpoint, info.num_labels, pooling=info.pooling, dropout=dropout, device=device
        )
        return cast(GPT, built)  # the trainer reads .config and .blocks, which it has

    return Task(
        build_model=model,
        build_batches=lambda rank, world_size: ShuffledBatches(
            len(data.train),
            lambda indices: collate([data.train[i] for i in indices], pad),
            batch_size=cfg.batch_size,
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
        ),
        objective=classification_loss,
        seq_len=None,
        evaluate=evaluate if len(data.val) else None,
        state={
            "finetune": {"base_checkpoint": str(base_checkpoint), "data": fingerprint},
            STATE_KEY: info.to_json(),
        },
        check_resume=check_resume,
        extra_metrics=epoch,
    )


def train_classifier(
    cfg: TrainConfig,
    base_checkpoint: str | Path,
    data: ClassifyData,
    out: str | Path,
    *,
    pad: int,
    pooling: str | None = None,
    dropout: float | None = None,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
) -> dict[str, Any]:
    """Train until cfg.steps; on_log gets metrics on rank 0, on_checkpoint on every rank.

    A fresh run first logs the untrained head's validation figures at step 0 (chance level),
    the baseline training improves on. pooling None: the backbone's default."""
    task = classification(
        cfg, Path(base_checkpoint), data, pad=pad, pooling=pooling, dropout=dropout
    )
    trainer = Trainer(cfg, task, out)
    if trainer.step == 0 and len(data.val) and trainer.rank == 0 and on_log:
        on_log(0, trainer.evaluate())
    history = trainer.fit(on_log=on_log, on_checkpoint=on_checkpoint)
    return {
        "steps": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "loss_history": dict(history),
        "last": trainer.last,
        "checkpoint": trainer.checkpoints.latest_location(),
        "best_checkpoint": best_of(trainer.checkpoints.uri),
        "parameters": trainer.model.num_parameters(),
        "epochs": trainer.step
        / batches_per_epoch(len(data.train), cfg.batch_size, trainer.world_size),
        "labels": list(data.labels),
    }


def classifier_info(directory: str | Path) -> ClassifierInfo | None:
    """The checkpoint's classifier section; None for a language model's checkpoint."""
    directory = Path(directory)
    saved = read_state(directory).get(STATE_KEY)
    return None if saved is None else ClassifierInfo.from_json(saved, str(directory))


def load_classifier(
    directory: str | Path, device: str = "cpu"
) -> tuple[SequenceClassifier, ClassifierInfo]:
    """A classifier checkpoint's model (on device, in eval mode) and its labels and pooling."""
    directory = Path(directory)
    info = classifier_info(directory)
    if info is None:
        raise ValueError(
            f"{directory} is a language model's checkpoint, not a classifier's (its "
            f"trainer_state.json has no {STATE_KEY!r} section)"
        )
    config = ModelConfig.load(directory / CONFIG_FILE)
    backbone = cast(GPT, build_model(config))
    model = SequenceClassifier(backbone, info.num_labels, info.pooling).to(device)
    load_checkpoint(directory, model=model)
    return model.eval(), info


@torch.no_grad()
def predict_proba(
    model: SequenceClassifier,
    tok: tokenizers.Tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """(N, num_labels) label probabilities of texts (and their pairs), encoded as in training;
    a text longer than the model's context is cut as training cuts it."""
    if not texts:
        return torch.zeros((0, model.num_labels))
    encoded = encode_texts(tok, texts, pairs, model.config.block_size)
    data = LabelledSet.build([ids for ids, _ in encoded], [0] * len(encoded))
    logits = classify_logits(model, data, batch_size=batch_size, pad=pad_id(tok))
    return logits.softmax(-1)

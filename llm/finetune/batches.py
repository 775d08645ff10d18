"""Batches of fine-tuning examples: right-padded to the batch's longest, targets shifted by one.

Right padding needs no attention mask during training: attention is causal, so a real token
only ever sees earlier positions, which are all real, and positions count from 0 as without
padding. The padded positions' outputs are garbage, and their targets are IGNORE_INDEX, so they
add nothing to the loss. The mask is still returned for callers that need it (and a test checks
that passing it changes no real position's logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, NamedTuple, TypeVar

import numpy as np
import torch

from llm.finetune.data import IGNORE_INDEX, TokenizedSet
from llm.train.data import ShuffledEpochs

B = TypeVar("B")


class Batch(NamedTuple):
    input_ids: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T): the next token where it is trained, else IGNORE_INDEX
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens, 0 on padding
    tokens: int  # real input tokens in the batch (for tokens/s)


def collate(rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> Batch:
    """rows of (ids, trained) -> one right-padded Batch of length max(len(ids)) - 1."""
    width = max(len(ids) for ids, _ in rows) - 1
    if width < 1:
        raise ValueError("every example needs at least two tokens (an input and a target)")
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, (ids, trained) in enumerate(rows):
        n = len(ids) - 1
        input_ids[row, :n] = ids[:-1]
        targets[row, :n] = np.where(trained[1:], ids[1:], IGNORE_INDEX)
        mask[row, :n] = 1
    return Batch(
        torch.from_numpy(input_ids),
        torch.from_numpy(targets),
        torch.from_numpy(mask),
        int(mask.sum()),
    )


def batches_per_epoch(examples: int, batch_size: int, world_size: int) -> int:
    return examples // world_size // batch_size


class ShuffledBatches(ShuffledEpochs, Generic[B]):
    """Shuffled batches of a training set's items, dealt to ranks as ShuffledEpochs deals
    pretraining's token windows; ``collate`` makes each batch of item indices into the batch a
    fine-tuning objective takes (padded examples, chosen/rejected pairs, labelled texts).
    Never ends."""

    def __init__(
        self,
        num_items: int,
        collate: Callable[[list[int]], B],
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        what: str = "training examples",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.collate = collate
        super().__init__(
            num_items,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
            what=f"{num_items} {what}",
        )

    def __iter__(self) -> ShuffledBatches[B]:
        return self

    def __next__(self) -> B:
        return self.collate([int(i) for i in self.next_indices()])


def example_batches(
    data: TokenizedSet,
    *,
    batch_size: int,
    pad_id: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> ShuffledBatches[Batch]:
    """SFT's batches: shuffled examples, right-padded."""
    return ShuffledBatches(
        len(data),
        lambda indices: collate([data[i] for i in indices], pad_id),
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )


def in_order(data: TokenizedSet, batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Every example once, in order (for validation); the last batch may be smaller."""
    for first in range(0, len(data), batch_size):
        rows = [data[i] for i in range(first, min(first + batch_size, len(data)))]
        yield collate(rows, pad_id)

"""Batches of fine-tuning examples: right-padded to the batch's longest, targets shifted by one.

Right padding needs no attention mask during training: attention is causal, so a real token
only ever sees earlier positions, which are all real, and positions count from 0 as without
padding. The padded positions' outputs are garbage, and their targets are IGNORE_INDEX, so they
add nothing to the loss. The mask is still returned for callers that need it (and a test checks
that passing it changes no real position's logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from llm.finetune.data import IGNORE_INDEX, TokenizedSet

_STATE_KEYS = ("epoch", "batch_in_epoch", "seed", "rank", "world_size")


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


class SFTBatches:
    """Shuffled batches, deterministic given seed, sharded across ranks; never ends.

    Each epoch permutes the examples with rng (seed, epoch); rank r takes every world_size-th
    one from r, and the tail that would leave ranks uneven is dropped, so all ranks take the
    same number of steps (llm.train.data.TrainBatches does the same with token windows).
    """

    def __init__(
        self,
        data: TokenizedSet,
        *,
        batch_size: int,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        self.data, self.batch_size, self.pad_id = data, batch_size, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batches_per_epoch = batches_per_epoch(len(data), batch_size, world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(data)} training examples, but batch_size {batch_size} x world_size "
                f"{world_size} needs at least {batch_size * world_size}"
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._perm_epoch = -1
        self._rank_order = np.zeros(0, dtype=np.int64)

    def _order(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            perm = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.data))
            per_rank = self.batches_per_epoch * self.batch_size
            self._rank_order = perm[self.rank :: self.world_size][:per_rank]
            self._perm_epoch = self.epoch
        return self._rank_order

    def __iter__(self) -> SFTBatches:
        return self

    def __next__(self) -> Batch:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        start = self.batch_in_epoch * self.batch_size
        indices = self._order()[start : start + self.batch_size]
        self.batch_in_epoch += 1
        return collate([self.data[int(i)] for i in indices], self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume so the next batch is the one that followed when state was taken."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}")
        for key in ("seed", "rank", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]}, but this loader has "
                    f"{key}={getattr(self, key)}; resuming would change the data order"
                )
        if not 0 <= state["batch_in_epoch"] <= self.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(
                f"loader state epoch {state['epoch']} batch {state['batch_in_epoch']} is out of "
                f"range ({self.batches_per_epoch} batches per epoch)"
            )
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


def in_order(data: TokenizedSet, batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Every example once, in order (for validation); the last batch may be smaller."""
    for first in range(0, len(data), batch_size):
        rows = [data[i] for i in range(first, min(first + batch_size, len(data)))]
        yield collate(rows, pad_id)

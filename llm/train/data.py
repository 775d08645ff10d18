"""Causal-LM batches from token shards (see llm.tokenizer.shards for the on-disk format).

A split's tokens are cut into non-overlapping windows of seq_len + 1 tokens; a window never
crosses a shard boundary, so each shard's last few tokens are unused. Input x is a window's
first seq_len tokens and target y the last seq_len. TrainBatches draws windows from the whole
split; MixtureBatches draws them from the split's sources in fixed shares (llm.train.mixture).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from llm.tokenizer.shards import SPLITS, read_manifest, shard_source

Batch = tuple[torch.Tensor, torch.Tensor]
_STATE_KEYS = ("epoch", "batch_in_epoch", "seed", "rank", "world_size")


class TokenShards:
    """Memory-mapped view of one split of a shard folder."""

    def __init__(
        self, directory: str | os.PathLike[str], split: str = "train", verify: bool = True
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.directory = Path(directory)
        self.split = split
        self.manifest = read_manifest(self.directory, verify=verify)
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_id: int = self.manifest["eos_id"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.entries: list[dict] = self.manifest["splits"][split]["shards"]
        self.arrays: list[np.ndarray] = [self._open(e["file"], e["tokens"]) for e in self.entries]
        self.num_tokens: int = sum(a.size for a in self.arrays)
        self.source: str | None = None  # None: every source of the split

    def by_source(self) -> dict[str, TokenShards]:
        """One view per source of the split (its shards only, the same memory maps), by name."""
        views: dict[str, TokenShards] = {}
        for name in sorted({shard_source(e) for e in self.entries}):
            keep = [i for i, e in enumerate(self.entries) if shard_source(e) == name]
            view = copy.copy(self)
            view.entries = [self.entries[i] for i in keep]
            view.arrays = [self.arrays[i] for i in keep]
            view.num_tokens = sum(a.size for a in view.arrays)
            view.source = name
            views[name] = view
        return views

    def _open(self, name: str, tokens: int) -> np.ndarray:
        path = self.directory / name
        if not path.is_file():
            raise FileNotFoundError(f"shard file not found: {path}")
        if tokens == 0:
            # np.memmap refuses zero-length files.
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype.newbyteorder("<"), mode="r", shape=(tokens,))

    def window_starts(self, length: int) -> np.ndarray:
        """Cumulative window counts per shard: shard s holds global windows
        [starts[s], starts[s+1]) of `length` tokens each."""
        counts = [a.size // length for a in self.arrays]
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def windows(self, indices: np.ndarray, length: int, starts: np.ndarray) -> np.ndarray:
        """Stack the given global windows into an int64 array of shape [len(indices), length]."""
        out = np.empty((len(indices), length), dtype=np.int64)
        shard_ids = np.searchsorted(starts, indices, side="right") - 1
        for row, (window, shard) in enumerate(zip(indices, shard_ids, strict=True)):
            offset = (int(window) - int(starts[shard])) * length
            out[row] = self.arrays[shard][offset : offset + length]
        return out


def _to_batch(tokens: np.ndarray) -> Batch:
    t = torch.from_numpy(tokens)
    return t[:, :-1], t[:, 1:]


class ShuffledEpochs:
    """Which items each batch takes, deterministic given seed and sharded across ranks.

    Each epoch permutes all items with rng (seed, epoch); rank r takes every world_size-th item
    starting at r, and the tail that would leave ranks uneven is dropped, so every rank runs the
    same number of steps. Epochs repeat without end. The position (epoch, batch) is the state a
    checkpoint saves. TrainBatches (token windows) and llm.finetune's ShuffledBatches build on it.
    """

    def __init__(
        self, num_items: int, *, batch_size: int, rank: int, world_size: int, seed: int, what: str
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_items = num_items
        self.batches_per_epoch = num_items // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{what}, but batch_size {batch_size} x world_size {world_size} needs at least "
                f"{batch_size * world_size}"
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._perm_epoch = -1
        self._rank_items = np.zeros(0, dtype=np.int64)

    def _items_for_epoch(self) -> np.ndarray:
        # Cached: one permutation per epoch, recomputed only when the epoch changes.
        if self._perm_epoch != self.epoch:
            perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_items)
            per_rank = self.batches_per_epoch * self.batch_size
            self._rank_items = perm[self.rank :: self.world_size][:per_rank]
            self._perm_epoch = self.epoch
        return self._rank_items

    def next_indices(self) -> np.ndarray:
        """The item indices of this rank's next batch."""
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        start = self.batch_in_epoch * self.batch_size
        self.batch_in_epoch += 1
        return self._items_for_epoch()[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Resume so the next batch is the one that followed when `state` was taken."""
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
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


class TrainBatches(ShuffledEpochs):
    """Random fixed-length windows for causal LM, in ShuffledEpochs' order; never ends."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        self.shards = shards
        self.window_len = seq_len + 1
        self._starts = shards.window_starts(self.window_len)
        self.num_windows = int(self._starts[-1])
        what = (
            f"{shards.directory} split {shards.split!r}: {self.num_windows} windows of "
            f"{self.window_len} tokens"
        )
        super().__init__(
            self.num_windows,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
            what=what,
        )

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Batch:
        return _to_batch(self.shards.windows(self.next_indices(), self.window_len, self._starts))

    def position(self) -> tuple[int, ...]:
        """Names the batch just drawn (for noise tied to it: llm.train.objectives)."""
        return (self.epoch, self.batch_in_epoch)


_MIXTURE_STATE_KEYS = ("seed", "rank", "world_size", "samples", "counts", "shares")


def _source_key(name: str) -> int:
    """A source's RNG stream, from its name: adding a source leaves the others' order alone."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big")


class MixtureBatches:
    """Causal-LM windows drawn from several sources in fixed shares; never ends.

    The run is one global sequence of windows. Its n-th window comes from the source furthest
    below its share of the first n (Megatron's BlendableDataset rule): deterministic, and after
    any number of windows each source's count is within about one window of share x n, so the
    realised shares track the requested ones from the first batches on (sampling each window's
    source at random would be off by ~sqrt(n) windows). Within a source, windows come in a
    fresh permutation per (seed, source, epoch), so a small source repeats in a new order each
    time it runs out. Each step takes the next batch_size x world_size windows of the sequence
    and rank r every world_size-th of them from r, as TrainBatches deals a permutation.

    Every rank follows the whole sequence, so the state (windows drawn so far, per source) is
    the same on all ranks and ``usage()`` reports the run's global figures on any of them.
    """

    def __init__(
        self,
        sources: Mapping[str, TokenShards],
        shares: Mapping[str, float],
        *,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        unknown = sorted(set(shares) - set(sources))
        if unknown:
            raise ValueError(f"mixture names sources {unknown} the data lacks: {sorted(sources)}")
        if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ValueError(f"mixture shares must be >= 0 and sum to 1, got {dict(shares)}")
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.window_len = seq_len + 1
        self.names = sorted(name for name, share in shares.items() if share > 0)
        self.shares = [float(shares[name]) for name in self.names]
        self._shards = [sources[name] for name in self.names]
        self._starts = [shards.window_starts(self.window_len) for shards in self._shards]
        self.windows_of = [int(starts[-1]) for starts in self._starts]
        empty = [n for n, w in zip(self.names, self.windows_of, strict=True) if w == 0]
        if empty:
            raise ValueError(f"sources {empty} hold no window of {self.window_len} tokens")
        self._keys = [_source_key(name) for name in self.names]
        self._perms: list[tuple[int, np.ndarray]] = [(-1, np.zeros(0, np.int64))] * len(self.names)
        self.samples = 0  # windows of the global sequence drawn so far
        self.counts = [0] * len(self.names)  # of those, per source

    def _pick(self) -> tuple[int, int]:
        """The next window of the global sequence: (source, its draw number in that source)."""
        n = self.samples + 1
        pairs = zip(self.shares, self.counts, strict=True)
        deficits = [share * n - count for share, count in pairs]
        source = deficits.index(max(deficits))
        draw = self.counts[source]
        self.counts[source] += 1
        self.samples += 1
        return source, draw

    def _window(self, source: int, draw: int) -> int:
        epoch, offset = divmod(draw, self.windows_of[source])
        if self._perms[source][0] != epoch:
            rng = np.random.default_rng((self.seed, self._keys[source], epoch))
            self._perms[source] = (epoch, rng.permutation(self.windows_of[source]))
        return int(self._perms[source][1][offset])

    def __iter__(self) -> MixtureBatches:
        return self

    def __next__(self) -> Batch:
        step = [self._pick() for _ in range(self.batch_size * self.world_size)]
        mine = step[self.rank :: self.world_size]
        out = np.empty((self.batch_size, self.window_len), dtype=np.int64)
        for source, shards in enumerate(self._shards):
            rows = [row for row, (s, _) in enumerate(mine) if s == source]
            if rows:
                windows = np.asarray([self._window(source, mine[r][1]) for r in rows], np.int64)
                out[rows] = shards.windows(windows, self.window_len, self._starts[source])
        return _to_batch(out)

    def position(self) -> tuple[int, ...]:
        """Names the batch just drawn (for noise tied to it: llm.train.objectives)."""
        return (self.samples // (self.batch_size * self.world_size),)

    def usage(self) -> dict[str, dict[str, float]]:
        """Per source, over every rank: windows and tokens drawn, epochs, realised share."""
        total = max(self.samples, 1)
        return {
            name: {
                "windows": count,
                "tokens": count * self.window_len,
                "epochs": count / windows,
                "share": count / total,
            }
            for name, count, windows in zip(self.names, self.counts, self.windows_of, strict=True)
        }

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "samples": self.samples,
            "counts": dict(zip(self.names, self.counts, strict=True)),
            "shares": dict(zip(self.names, self.shares, strict=True)),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume so the next batch is the one that followed when `state` was taken."""
        missing = [k for k in _MIXTURE_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"mixture loader state lacks {missing}")
        mine = self.state_dict()
        for key in ("seed", "rank", "world_size", "shares"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]}, but this loader has "
                    f"{key}={mine[key]}; resuming would change the data order"
                )
        counts = state["counts"]
        step = self.batch_size * self.world_size
        if set(counts) != set(self.names) or sum(counts.values()) != state["samples"]:
            raise ValueError(f"loader state counts {counts} do not add up to {state['samples']}")
        if state["samples"] % step:
            raise ValueError(
                f"loader state is {state['samples']} windows in, not a whole number of steps "
                f"of {step} (batch_size x world_size): the batch size changed"
            )
        self.samples = int(state["samples"])
        self.counts = [int(counts[name]) for name in self.names]


def val_batches(shards: TokenShards, *, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Every window of the split once, in order; the last batch may be smaller.
    Yields nothing when the split has no complete window."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    length = seq_len + 1
    starts = shards.window_starts(length)
    total = int(starts[-1])
    for first in range(0, total, batch_size):
        indices = np.arange(first, min(first + batch_size, total), dtype=np.int64)
        yield _to_batch(shards.windows(indices, length, starts))

"""Training objectives: the loss plug-ins of ``llm.train.trainer.Task`` and the batches that
the encoder (masked LM) and encoder-decoder (span corruption) objectives train on.

``next_token_loss`` scores (inputs, labels) pairs with the model's own loss, which skips
IGNORE_INDEX labels: causal LM windows for a GPT, and MaskedLMBatches for an EncoderLM alike.
``span_corruption_loss`` feeds an EncoderDecoder the corrupted input and the shifted targets.

The two noised batch sources wrap `TrainBatches` (or, given a mixture, `MixtureBatches`): they
draw the same windows in the same order, sharded across ranks the same way, and add noise from
an RNG seeded by (seed, rank) and the position of the window batch just drawn. The noise is thus
a pure function of the loader position, and the wrapped loader's state_dict()/load_state_dict()
resume the noised batches exactly as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from llm.model.encoders import shift_right
from llm.train.data import MixtureBatches, TokenShards, TrainBatches

IGNORE_INDEX = -100  # the label torch.nn.functional.cross_entropy skips by default
_MLM_STREAM, _SPAN_STREAM = 1, 2  # keep the two objectives' noise independent

Pair = tuple[torch.Tensor, torch.Tensor]


def _on_device(pair: Pair, device: torch.device) -> Pair:
    if device.type == "cuda":  # a copy from pinned memory does not block the host
        pair = (pair[0].pin_memory(), pair[1].pin_memory())
    return pair[0].to(device, non_blocking=True), pair[1].to(device, non_blocking=True)


def next_token_loss(
    model: nn.Module, batch: Pair, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The model's loss on (inputs, labels); every label counts as a token trained on."""
    x, y = _on_device(batch, device)
    _, loss = model(x, y)
    return loss, y.numel()


def span_corruption_loss(
    model: nn.Module, batch: Pair, device: torch.device
) -> tuple[torch.Tensor, int]:
    """An EncoderDecoder's loss on SpanCorruptionBatches: the decoder reads the targets shifted
    right (teacher forcing) and predicts them."""
    src, targets = _on_device(batch, device)
    _, loss = model(src, shift_right(targets), targets)
    return loss, int((targets != IGNORE_INDEX).sum())


class _NoisedBatches:
    """Windows of `length` tokens from TrainBatches, plus an RNG tied to each batch."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        batch_size: int,
        length: int,
        rank: int,
        world_size: int,
        seed: int,
        stream: int,
        mixture: Mapping[str, float] | None,
    ) -> None:
        # the windows are seq_len + 1 tokens long; x and y together give all of them
        window = {"batch_size": batch_size, "seq_len": length - 1, "rank": rank, "seed": seed}
        self.windows: TrainBatches | MixtureBatches = (
            TrainBatches(shards, world_size=world_size, **window)
            if mixture is None
            else MixtureBatches(shards.by_source(), mixture, world_size=world_size, **window)
        )
        self._stream = stream

    def _next_window_batch(self) -> tuple[np.ndarray, np.random.Generator]:
        x, y = next(self.windows)
        tokens = torch.cat([x, y[:, -1:]], dim=1).numpy()
        w = self.windows
        # read after next(): the position now names the batch just drawn
        rng = np.random.default_rng((w.seed, self._stream, w.rank, *w.position()))
        return tokens, rng

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


class MaskedLMBatches(_NoisedBatches):
    """BERT masking: each non-special token is chosen with probability `mask_prob`; of those,
    80% become `mask_id`, 10% a random token, 10% stay. Yields (input_ids, labels), both
    [batch_size, seq_len] int64, labels IGNORE_INDEX where nothing was chosen."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        batch_size: int,
        seq_len: int,
        mask_id: int,
        special_ids: Sequence[int] = (),
        mask_prob: float = 0.15,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        mixture: Mapping[str, float] | None = None,
    ) -> None:
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if not 0 <= mask_id < shards.vocab_size:
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary ({shards.vocab_size})")
        super().__init__(
            shards,
            batch_size=batch_size,
            length=seq_len,
            rank=rank,
            world_size=world_size,
            seed=seed,
            stream=_MLM_STREAM,
            mixture=mixture,
        )
        self.mask_id = mask_id
        # EOS separates documents; predicting it from a mask would teach nothing about text.
        self.special_ids = np.asarray(sorted({shards.eos_id, mask_id, *special_ids}))
        self.mask_prob = mask_prob
        self.vocab_size = shards.vocab_size

    def __iter__(self) -> MaskedLMBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, rng = self._next_window_batch()
        draw = rng.random(tokens.shape)
        chosen = (draw < self.mask_prob) & ~np.isin(tokens, self.special_ids)
        action = rng.random(tokens.shape)
        random_ids = rng.integers(0, self.vocab_size, tokens.shape)
        inputs = tokens.copy()
        inputs[chosen & (action < 0.8)] = self.mask_id
        swap = chosen & (action >= 0.8) & (action < 0.9)
        inputs[swap] = random_ids[swap]
        labels = np.where(chosen, tokens, IGNORE_INDEX)
        return torch.from_numpy(inputs), torch.from_numpy(labels)


def _segment(items: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random split of `items` into `segments` non-empty parts."""
    cuts = np.sort(rng.choice(np.arange(1, items), segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [items]]))


class SpanCorruptionBatches(_NoisedBatches):
    """T5 span corruption on windows of `raw_len` tokens: `noise_density` of each window, in
    spans of mean length `mean_span`, is cut out; each span becomes one sentinel in the input
    and is spelled out after that sentinel in the target; both end with EOS. Yields (inputs,
    targets) int64 of shapes [batch_size, input_len] and [batch_size, target_len]."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        batch_size: int,
        raw_len: int,
        sentinel_ids: Sequence[int],
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        mixture: Mapping[str, float] | None = None,
    ) -> None:
        if not 0 < noise_density < 1 or mean_span < 1:
            raise ValueError(
                f"need 0 < noise_density < 1 and mean_span >= 1, got {noise_density}, {mean_span}"
            )
        self.num_noise = min(max(round(raw_len * noise_density), 1), raw_len - 1)
        self.num_spans = max(round(self.num_noise / mean_span), 1)
        if raw_len - self.num_noise < self.num_spans:
            raise ValueError(f"raw_len {raw_len} is too short for {self.num_spans} spans")
        if len(set(sentinel_ids)) < self.num_spans:
            raise ValueError(
                f"{self.num_spans} spans per window need as many distinct sentinel ids, "
                f"got {len(set(sentinel_ids))}"
            )
        super().__init__(
            shards,
            batch_size=batch_size,
            length=raw_len,
            rank=rank,
            world_size=world_size,
            seed=seed,
            stream=_SPAN_STREAM,
            mixture=mixture,
        )
        self.sentinels = np.asarray(sentinel_ids[: self.num_spans], dtype=np.int64)
        self.eos_id = shards.eos_id
        self.input_len = raw_len - self.num_noise + self.num_spans + 1
        self.target_len = self.num_noise + self.num_spans + 1

    def _corrupt(self, row: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
        noise = _segment(self.num_noise, self.num_spans, rng)
        keep = _segment(row.size - self.num_noise, self.num_spans, rng)
        inputs: list[int] = []
        targets: list[int] = []
        pos = 0
        for sentinel, k, n in zip(self.sentinels.tolist(), keep, noise, strict=True):
            inputs += [*row[pos : pos + k].tolist(), sentinel]
            targets += [sentinel, *row[pos + k : pos + k + n].tolist()]
            pos += k + n
        return [*inputs, self.eos_id], [*targets, self.eos_id]

    def __iter__(self) -> SpanCorruptionBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, rng = self._next_window_batch()
        pairs = [self._corrupt(row, rng) for row in tokens]
        inputs = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        targets = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        return inputs, targets

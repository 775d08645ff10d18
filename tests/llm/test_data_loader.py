import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.tokenizer.bpe import save_tokenizer, train_bpe
from llm.tokenizer.shards import write_manifest, write_shard
from llm.train.data import TokenShards, TrainBatches, val_batches

SEQ_LEN = 7  # windows of 8 tokens
# Token i of the split is i (mod vocab) so a window is identified by its first token.
TRAIN_SHARD_TOKENS = [83, 0, 120, 45]  # 10 + 0 + 15 + 5 = 30 windows, with ragged tails
VAL_SHARD_TOKENS = [50]  # 6 windows


def make_folder(directory: Path) -> None:
    save_tokenizer(train_bpe(["tiny corpus " * 10], vocab_size=300), directory / "tokenizer.json")
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    start = 0
    for split, sizes in (("train", TRAIN_SHARD_TOKENS), ("val", VAL_SHARD_TOKENS)):
        for i, n in enumerate(sizes):
            tokens = (np.arange(start, start + n) % 65536).astype(np.uint16)
            start += n
            entry = write_shard(directory, f"{split}-{i:04d}.bin", tokens)
            shards[split].append({**entry, "documents": 1})
    write_manifest(
        directory,
        tokenizer_file="tokenizer.json",
        vocab_size=65536,
        dtype="uint16",
        eos_id=0,
        shards=shards,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    make_folder(directory)
    return directory


def all_windows(shards: TokenShards) -> set[int]:
    """First token of every window, computed independently of the loader."""
    length = SEQ_LEN + 1
    return {int(a[k * length]) for a in shards.arrays for k in range(a.size // length)}


def check_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[int]:
    assert x.dtype == y.dtype == torch.long
    assert x.shape == y.shape == (batch_size, SEQ_LEN)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Synthetic tokens count up by one, so a window must be contiguous.
    assert torch.equal(y - x, torch.ones_like(x))
    return x[:, 0].tolist()


def test_token_shards_view(folder: Path) -> None:
    shards = TokenShards(folder)
    assert shards.num_tokens == sum(TRAIN_SHARD_TOKENS)
    assert (shards.vocab_size, shards.eos_id) == (65536, 0)
    assert isinstance(shards.arrays[0], np.memmap)
    assert TokenShards(folder, "val").num_tokens == 50
    with pytest.raises(ValueError, match="split"):
        TokenShards(folder, "test")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_epoch_partition_across_ranks(folder: Path, world_size: int) -> None:
    shards, batch_size = TokenShards(folder), 4
    seen: list[int] = []
    per_rank = []
    for rank in range(world_size):
        loader = TrainBatches(
            shards, batch_size=batch_size, seq_len=SEQ_LEN, rank=rank, world_size=world_size
        )
        per_rank.append(loader.batches_per_epoch)
        for x, y in itertools.islice(loader, loader.batches_per_epoch):
            seen += check_batch(x, y, batch_size)
        assert loader.state_dict()["epoch"] == 0
    assert len(set(per_rank)) == 1
    assert len(seen) == len(set(seen)), "a window was given to two ranks"
    expected = all_windows(shards)
    assert set(seen) <= expected
    used = per_rank[0] * batch_size * world_size
    assert len(seen) == used and len(expected) - used < batch_size * world_size


def test_same_seed_same_batches(folder: Path) -> None:
    shards = TokenShards(folder)

    def firsts(seed: int) -> list[list[int]]:
        loader = TrainBatches(shards, batch_size=3, seq_len=SEQ_LEN, seed=seed)
        return [x[:, 0].tolist() for x, _ in itertools.islice(loader, 25)]

    assert firsts(7) == firsts(7)
    assert firsts(7) != firsts(8)


def test_epochs_reshuffle_and_repeat(folder: Path) -> None:
    loader = TrainBatches(TokenShards(folder), batch_size=5, seq_len=SEQ_LEN)
    n = loader.batches_per_epoch
    epochs = [[x[:, 0].tolist() for x, _ in itertools.islice(loader, n)] for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert sorted(itertools.chain(*epochs[0])) == sorted(itertools.chain(*epochs[1]))
    assert loader.state_dict()["epoch"] == 1


@pytest.mark.parametrize("consumed", [3, 7, 8, 15])  # 7 batches per epoch: 7, 8, 15 cross
def test_resume_restores_next_batch(folder: Path, consumed: int) -> None:
    shards = TokenShards(folder)
    kwargs = {"batch_size": 2, "seq_len": SEQ_LEN, "rank": 1, "world_size": 2, "seed": 3}
    original = TrainBatches(shards, **kwargs)
    assert original.batches_per_epoch == 7
    list(itertools.islice(original, consumed))
    state = original.state_dict()
    resumed = TrainBatches(shards, **kwargs)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(
        itertools.islice(original, 10), itertools.islice(resumed, 10), strict=True
    ):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_resume_rejects_other_layout(folder: Path) -> None:
    shards = TokenShards(folder)
    state = TrainBatches(shards, batch_size=2, seq_len=SEQ_LEN, seed=1).state_dict()
    other = TrainBatches(shards, batch_size=2, seq_len=SEQ_LEN, seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_too_few_windows(folder: Path) -> None:
    shards = TokenShards(folder, "val")  # 6 windows
    TrainBatches(shards, batch_size=3, seq_len=SEQ_LEN, world_size=2)
    with pytest.raises(ValueError, match=r"6 windows .* needs at least 8"):
        TrainBatches(shards, batch_size=4, seq_len=SEQ_LEN, world_size=2)
    with pytest.raises(ValueError, match="rank 2"):
        TrainBatches(shards, batch_size=1, seq_len=SEQ_LEN, rank=2, world_size=2)


@pytest.mark.parametrize("split", ["train", "val"])
def test_val_batches_cover_every_window_once(folder: Path, split: str) -> None:
    shards = TokenShards(folder, split)
    batches = list(val_batches(shards, batch_size=4, seq_len=SEQ_LEN))
    seen: list[int] = []
    for i, (x, y) in enumerate(batches):
        seen += check_batch(x, y, 4 if i < len(batches) - 1 else x.shape[0])
    assert seen == sorted(all_windows(shards))
    again = [x[:, 0].tolist() for x, _ in val_batches(shards, batch_size=4, seq_len=SEQ_LEN)]
    assert list(itertools.chain(*again)) == seen

import itertools

import numpy as np
import pytest
import torch

from llm.train.data import TokenShards, TrainBatches
from llm.train.objectives import IGNORE_INDEX, MaskedLMBatches, SpanCorruptionBatches
from tests.llm.test_data_loader import make_folder

MASK_ID = 65535
SENTINELS = list(range(65000, 65020))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    directory = tmp_path_factory.mktemp("objective-shards")
    make_folder(directory)  # 30 train windows of 8 tokens; token i of the split is i
    return TokenShards(directory)


def mlm(shards: TokenShards, **kw: int) -> MaskedLMBatches:
    return MaskedLMBatches(shards, batch_size=2, seq_len=8, mask_id=MASK_ID, seed=5, **kw)


def test_masked_lm_labels_and_proportions(shards: TokenShards) -> None:
    loader = MaskedLMBatches(
        shards, batch_size=3, seq_len=8, mask_id=MASK_ID, mask_prob=0.5, seed=1
    )
    windows = TrainBatches(shards, batch_size=3, seq_len=7, seed=1)
    counts = {"chosen": 0, "masked": 0, "kept": 0, "total": 0}
    for (inputs, labels), (x, y) in itertools.islice(zip(loader, windows, strict=False), 200):
        original = torch.cat([x, y[:, -1:]], dim=1)
        assert inputs.shape == labels.shape == (3, 8) and inputs.dtype == torch.long
        chosen = labels != IGNORE_INDEX
        assert torch.equal(labels[chosen], original[chosen])
        assert torch.equal(inputs[~chosen], original[~chosen])  # unchosen tokens untouched
        assert not chosen[original == 0].any()  # EOS is never a target
        counts["chosen"] += int(chosen.sum())
        counts["masked"] += int((inputs[chosen] == MASK_ID).sum())
        counts["kept"] += int((inputs[chosen] == original[chosen]).sum())
        counts["total"] += original.numel()
    assert counts["chosen"] / counts["total"] == pytest.approx(0.5, abs=0.03)
    assert counts["masked"] / counts["chosen"] == pytest.approx(0.8, abs=0.03)
    assert counts["kept"] / counts["chosen"] == pytest.approx(0.1, abs=0.03)


def test_masked_lm_determinism_and_resume(shards: TokenShards) -> None:
    first = [b for b in itertools.islice(mlm(shards), 20)]
    again = [b for b in itertools.islice(mlm(shards), 20)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    original = mlm(shards)
    list(itertools.islice(original, 9))  # 7 batches per epoch (15 windows / 2): crosses one
    resumed = mlm(shards)
    resumed.load_state_dict(original.state_dict())
    for a, b in zip(itertools.islice(original, 8), itertools.islice(resumed, 8), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_masked_lm_ranks_do_not_overlap(shards: TokenShards, world_size: int) -> None:
    seen: list[int] = []
    for rank in range(world_size):
        loader = mlm(shards, rank=rank, world_size=world_size)
        for inputs, labels in itertools.islice(loader, loader.windows.batches_per_epoch):
            original = torch.where(labels == IGNORE_INDEX, inputs, labels)
            assert torch.equal(original[:, 1:] - original[:, :-1], torch.ones(2, 7).long())
            seen += original[:, 0].tolist()  # synthetic tokens: the first names the window
    assert len(seen) == len(set(seen)) > 30 - 2 * world_size


def test_span_corruption_shapes_and_reconstruction(shards: TokenShards) -> None:
    loader = SpanCorruptionBatches(shards, batch_size=2, raw_len=8, sentinel_ids=SENTINELS)
    windows = TrainBatches(shards, batch_size=2, seq_len=7)
    assert (loader.num_noise, loader.num_spans) == (1, 1)
    long = SpanCorruptionBatches(
        TokenShards(shards.directory, "val"), batch_size=1, raw_len=40, sentinel_ids=SENTINELS
    )
    assert (long.num_noise, long.num_spans, long.input_len, long.target_len) == (6, 2, 37, 9)
    for (inputs, targets), (x, y) in itertools.islice(zip(loader, windows, strict=False), 15):
        assert inputs.shape == (2, loader.input_len) and targets.shape == (2, loader.target_len)
        for inp, tgt, raw in zip(inputs, targets, torch.cat([x, y[:, -1:]], 1), strict=True):
            inp, tgt = inp.tolist(), tgt.tolist()
            assert inp[-1] == tgt[-1] == 0
            assert reconstruct(inp[:-1], tgt[:-1]) == raw.tolist()


def reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """Put each sentinel's target span back where the sentinel sits in the input."""
    spans: dict[int, list[int]] = {}
    for token in targets:
        if token in SENTINELS:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return [t for token in inputs for t in (spans[token] if token in SENTINELS else [token])]


def test_span_corruption_resume_and_determinism(shards: TokenShards) -> None:
    def make() -> SpanCorruptionBatches:
        return SpanCorruptionBatches(
            shards, batch_size=2, raw_len=8, sentinel_ids=SENTINELS, rank=1, world_size=2, seed=4
        )

    original = make()
    list(itertools.islice(original, 5))
    resumed = make()
    resumed.load_state_dict(original.state_dict())
    for a, b in zip(itertools.islice(original, 6), itertools.islice(resumed, 6), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(next(make())[0].numpy(), next(make())[0].numpy())


def test_bad_objective_settings(shards: TokenShards) -> None:
    with pytest.raises(ValueError, match="mask_id"):
        MaskedLMBatches(shards, batch_size=2, seq_len=8, mask_id=70000)
    with pytest.raises(ValueError, match="sentinel"):
        SpanCorruptionBatches(shards, batch_size=1, raw_len=8, sentinel_ids=[])
    with pytest.raises(ValueError, match="noise_density"):
        SpanCorruptionBatches(
            shards, batch_size=1, raw_len=8, sentinel_ids=SENTINELS, noise_density=1.5
        )

"""Data mixtures: the shares a mixture asks for (llm.train.mixture) and the sampler that draws
them (MixtureBatches): realised shares, determinism, exact resume, dealing to ranks, and the
noised objectives on top of it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.tokenizer.bpe import save_tokenizer, train_bpe
from llm.tokenizer.shards import DEFAULT_SOURCE, read_manifest, write_manifest, write_shard
from llm.train.data import MixtureBatches, TokenShards, TrainBatches
from llm.train.mixture import MixtureError, plan_mixture, source_windows, window_length
from llm.train.objectives import MaskedLMBatches, SpanCorruptionBatches

SEQ_LEN = 7  # windows of 8 tokens
# source -> shard sizes (train); each source's tokens lie in a range of their own
SOURCES = {"books": [400, 250], "news": [90], "web": [1200, 600, 200]}
BASE = {"books": 10_000, "news": 20_000, "web": 30_000}
SHARES = {"web": 0.6, "books": 0.3, "news": 0.1}


def make_folder(directory: Path, sources: dict[str, list[int]] = SOURCES) -> Path:
    save_tokenizer(train_bpe(["tiny corpus " * 10], vocab_size=300), directory / "tokenizer.json")
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    for name, sizes in sources.items():
        start = BASE[name]
        for i, n in enumerate(sizes):
            tokens = np.arange(start, start + n, dtype=np.uint16)
            start += n
            entry = write_shard(directory, f"train-{name}-{i}.bin", tokens)
            shards["train"].append({**entry, "documents": 1, "source": name})
        val = write_shard(directory, f"val-{name}.bin", np.arange(40, dtype=np.uint16))
        shards["val"].append({**val, "documents": 1, "source": name})
    write_manifest(
        directory,
        tokenizer_file="tokenizer.json",
        vocab_size=65536,
        dtype="uint16",
        eos_id=0,
        shards=shards,
    )
    return directory


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("mixture"))


def source_of(token: int) -> str:
    return max((b, name) for name, b in BASE.items() if b <= token)[1]


def mixture(folder: Path, **kwargs: object) -> MixtureBatches:
    options: dict = {"batch_size": 4, "seq_len": SEQ_LEN, "seed": 3, **kwargs}
    shares = options.pop("shares", SHARES)
    return MixtureBatches(TokenShards(folder).by_source(), shares, **options)


def firsts(batches: MixtureBatches, n: int) -> list[list[int]]:
    return [x[:, 0].tolist() for x, _ in itertools.islice(batches, n)]


# --- the manifest records sources ---------------------------------------------------------------


def test_manifest_lists_each_splits_sources(folder: Path) -> None:
    manifest = read_manifest(folder)
    assert manifest["splits"]["train"]["sources"] == {
        name: {"tokens": sum(sizes), "documents": len(sizes)} for name, sizes in SOURCES.items()
    }
    views = TokenShards(folder).by_source()
    assert sorted(views) == sorted(SOURCES)
    assert all(views[n].num_tokens == sum(SOURCES[n]) for n in SOURCES)
    assert source_windows(manifest, "train", 8) == {"books": 50 + 31, "news": 11, "web": 250}


def test_a_manifest_without_sources_has_one(tmp_path: Path) -> None:
    from tests.llm.test_data_loader import make_folder as untagged

    untagged(tmp_path)
    assert list(TokenShards(tmp_path).by_source()) == [DEFAULT_SOURCE]
    assert source_windows(read_manifest(tmp_path), "train", 8) == {DEFAULT_SOURCE: 30}


# --- the sampler --------------------------------------------------------------------------------


def test_realised_shares_track_the_requested_ones(folder: Path) -> None:
    batches = mixture(folder, batch_size=8)
    for count in (10, 100, 1000):
        for x, y in itertools.islice(batches, count - batches.position()[0]):
            # whole windows of one source each, counting up: never across shards or sources
            assert torch.equal(y - x, torch.ones_like(x))
            assert all(source_of(int(r[0])) == source_of(int(r[-1])) for r in y)
        usage = batches.usage()
        for name, share in SHARES.items():
            # within one window of share x windows, so within 1% after 100 batches of 8
            assert abs(usage[name]["windows"] - share * count * 8) <= 1
            assert abs(usage[name]["share"] - share) < 0.01
    # 8000 windows: news (11 windows) was read about 73 times over
    usage = batches.usage()
    assert usage["news"]["epochs"] == usage["news"]["windows"] / 11 == pytest.approx(800 / 11)
    assert usage["web"]["tokens"] == usage["web"]["windows"] * (SEQ_LEN + 1)


def test_each_epoch_of_a_source_reads_every_window_once(folder: Path) -> None:
    batches = mixture(folder, batch_size=10, shares={"news": 1.0})
    rows = [t for batch in firsts(batches, 11) for t in batch]  # 110 windows: 10 epochs
    for epoch in range(10):
        assert sorted(rows[epoch * 11 : (epoch + 1) * 11]) == sorted(set(rows))
    assert rows[:11] != rows[11:22]  # a new order each epoch


def test_the_order_is_deterministic_and_follows_the_seed(folder: Path) -> None:
    assert firsts(mixture(folder), 30) == firsts(mixture(folder), 30)
    assert firsts(mixture(folder), 30) != firsts(mixture(folder, seed=4), 30)


def test_state_dict_resumes_exactly(folder: Path) -> None:
    straight = firsts(mixture(folder), 40)
    first = mixture(folder)
    head = firsts(first, 17)
    state = first.state_dict()
    resumed = mixture(folder)
    resumed.load_state_dict(state)
    assert head + firsts(resumed, 23) == straight
    assert resumed.usage() == mixture_after(folder, 40).usage()


def mixture_after(folder: Path, n: int) -> MixtureBatches:
    batches = mixture(folder)
    firsts(batches, n)
    return batches


def test_a_state_of_another_mixture_is_refused(folder: Path) -> None:
    state = mixture_after(folder, 3).state_dict()
    other = mixture(folder, shares={"web": 0.5, "books": 0.5})
    with pytest.raises(ValueError, match=r"shares=.*resuming would change the data order"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="the batch size changed"):
        mixture(folder, batch_size=5).load_state_dict(state)


def test_ranks_split_the_global_sequence(folder: Path) -> None:
    one = firsts(mixture(folder, batch_size=6), 20)
    ranks = [firsts(mixture(folder, batch_size=3, rank=r, world_size=2), 20) for r in range(2)]
    for step in range(20):
        # rank r takes every second window of the step's block, from r
        dealt = [w for pair in zip(ranks[0][step], ranks[1][step], strict=True) for w in pair]
        assert dealt == one[step]
    # a checkpoint holds rank 0's state; every rank resumes from it (llm.train.trainer)
    rank0 = mixture(folder, batch_size=3, world_size=2)
    firsts(rank0, 5)
    resumed = mixture(folder, batch_size=3, rank=1, world_size=2)
    resumed.load_state_dict(rank0.state_dict() | {"rank": 1})
    assert firsts(resumed, 15) == ranks[1][5:]


def test_bad_shares_and_sources_are_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"sources \['poems'\] the data lacks"):
        mixture(folder, shares={"web": 0.5, "poems": 0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        mixture(folder, shares={"web": 0.5, "books": 0.4})
    with pytest.raises(ValueError, match=r"\['news'\] hold no window of 100 tokens"):
        mixture(folder, seq_len=99)


@pytest.mark.parametrize("kind", ["mlm", "span"])
def test_noised_batches_mix_and_resume(folder: Path, kind: str) -> None:
    def make() -> MaskedLMBatches | SpanCorruptionBatches:
        views = TokenShards(folder)
        if kind == "mlm":
            return MaskedLMBatches(
                views, batch_size=8, seq_len=8, mask_id=1, seed=2, mixture=SHARES
            )
        return SpanCorruptionBatches(
            views, batch_size=8, raw_len=8, sentinel_ids=[1, 2], seed=2, mixture=SHARES
        )

    straight = [b for b in itertools.islice(make(), 30)]
    first = make()
    list(itertools.islice(first, 12))
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    for expected, got in zip(straight[12:], itertools.islice(resumed, 18), strict=True):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert isinstance(resumed.windows, MixtureBatches)
    shares = {n: u["share"] for n, u in resumed.windows.usage().items()}
    assert shares == pytest.approx(SHARES, abs=0.01)


def test_an_unmixed_noised_source_keeps_its_noise(folder: Path) -> None:
    """Adding mixtures left the unmixed batches as they were: the same RNG positions."""
    masked = MaskedLMBatches(TokenShards(folder), batch_size=4, seq_len=8, mask_id=1, seed=2)
    assert isinstance(masked.windows, TrainBatches)
    next(masked)
    assert masked.windows.position() == (0, 1)


# --- the plan -----------------------------------------------------------------------------------

WINDOWS = {"books": 300, "news": 100, "web": 600}


def test_weights_are_the_shares() -> None:
    plan = plan_mixture(WINDOWS, run_windows=1000, weights={"web": 0.6, "books": 0.4})
    assert plan.shares == plan.requested == {"books": 0.4, "web": 0.6}
    assert plan.expected_epochs() == {"books": 0.4 * 1000 / 300, "web": 1.0}


def test_temperature_flattens_the_sizes() -> None:
    natural = plan_mixture(WINDOWS, run_windows=1000, temperature=1.0).shares
    assert natural == pytest.approx({"books": 0.3, "news": 0.1, "web": 0.6})
    flat = plan_mixture(WINDOWS, run_windows=1000, temperature=2.0).shares
    roots = {s: n**0.5 for s, n in WINDOWS.items()}
    assert flat == pytest.approx({s: r / sum(roots.values()) for s, r in roots.items()})
    assert plan_mixture({"a": 10**9, "b": 1}, run_windows=1, temperature=0.01).shares["a"] == 1


def test_epochs_weigh_by_size() -> None:
    plan = plan_mixture(WINDOWS, run_windows=1500, epochs={"web": 1, "books": 2, "news": 3})
    assert plan.shares == pytest.approx({"books": 0.4, "news": 0.2, "web": 0.4})
    assert plan.expected_epochs() == pytest.approx({"books": 2, "news": 3, "web": 1})


def test_max_epochs_caps_a_source_and_gives_the_rest_to_the_others() -> None:
    plan = plan_mixture(
        WINDOWS, run_windows=1000, weights={"web": 0.5, "books": 0.2, "news": 0.3}, max_epochs=2
    )
    # news at 0.3 would be read 3 times: held at 2 epochs (0.2), its 0.1 shared 5:2
    assert plan.capped == ["news"]
    assert plan.shares == pytest.approx({"books": 0.2 + 0.2 / 7, "news": 0.2, "web": 0.5 + 0.5 / 7})
    assert max(plan.expected_epochs().values()) == pytest.approx(2)
    # when the others run into the cap too, they are held as well
    tight = plan_mixture(WINDOWS, run_windows=2000, weights=plan.requested, max_epochs=2)
    assert tight.shares == pytest.approx({"books": 0.3, "news": 0.1, "web": 0.6})
    with pytest.raises(MixtureError, match=r"fill only 50\.0% of it") as e:
        plan_mixture(WINDOWS, run_windows=2000, temperature=1.0, max_epochs=1)
    assert e.value.loc == ("max_epochs",)


def test_a_missing_or_empty_source_is_named() -> None:
    with pytest.raises(MixtureError, match=r"'poems' is not in the data; its sources are") as e:
        plan_mixture(WINDOWS, run_windows=10, weights={"web": 0.5, "poems": 0.5})
    assert e.value.loc == ("weights", "poems")
    with pytest.raises(MixtureError, match="holds no whole window") as e:
        plan_mixture({**WINDOWS, "news": 0}, run_windows=10, epochs={"news": 1})
    assert e.value.loc == ("epochs", "news")


def test_window_length_follows_the_objective() -> None:
    assert window_length("decoder", 64) == 65
    assert window_length("encoder", 64) == window_length("encoder_decoder", 64) == 64

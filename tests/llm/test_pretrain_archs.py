"""Pretraining every architecture through ``llm.train.pretrain.train``, the function the train
job's Ray workers run: the objective follows ``model.arch``, validation scores it, the
checkpoint loads back as the right model class, and a resumed run is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm.model.config import ModelConfig
from llm.model.encoders import EncoderDecoder, EncoderLM
from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, sentinel_token
from llm.train.checkpoint import load_model
from llm.train.config import TrainConfig
from llm.train.pretrain import train
from tests.llm.conftest import build_shard_folder, shakespeare_docs

SPECIALS = (EOS_TOKEN, MASK_TOKEN, *(sentinel_token(i) for i in range(8)))
SEQ_LEN = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("arch-shards")
    return build_shard_folder(folder, shakespeare_docs(60_000), special_tokens=SPECIALS)


def _config(arch: str, vocab: int) -> ModelConfig:
    return ModelConfig(
        arch=arch, vocab_size=vocab, block_size=SEQ_LEN, n_layer=2, n_head=2, n_embd=32
    )


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        log_every=5,
        eval_every=10,
        eval_batches=2,
        checkpoint_every=10,
        spike_factor=None,
        noise_density=0.2,
        mean_span=2.0,
    )


ARCHS = [("encoder", EncoderLM), ("encoder_decoder", EncoderDecoder)]


@pytest.mark.parametrize(("arch", "model_class"), ARCHS)
def test_each_arch_pretrains_on_its_objective_and_resumes_exactly(
    shards: Path, tmp_path: Path, arch: str, model_class: type
) -> None:
    from llm.train.data import TokenShards

    vocab = TokenShards(shards, "train").vocab_size
    config = _config(arch, vocab)
    full = train(_cfg(30), config, shards, tmp_path / "full")
    losses = full["loss_history"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert full["last"]["val_loss"] > 0
    model = load_model(Path(full["checkpoint"]))
    assert isinstance(model, model_class) and model.config == config

    # a crash right after the step-10 checkpoint, then the same run again: it resumes there
    # and ends with the weights of the run that never stopped
    def crash(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 10:
            raise RuntimeError("crash after the step-10 checkpoint")

    with pytest.raises(RuntimeError, match="crash"):
        train(_cfg(30), config, shards, tmp_path / "resumed", on_checkpoint=crash)
    resumed = train(_cfg(30), config, shards, tmp_path / "resumed")
    assert resumed["loss_history"][0] != losses[0]  # it did not start over
    assert resumed["loss_history"][-1] == pytest.approx(losses[-1], rel=1e-5)
    a, b = load_model(Path(full["checkpoint"])), load_model(Path(resumed["checkpoint"]))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_a_tokenizer_without_the_objectives_tokens_is_refused(
    tmp_path: Path, shared_data: Path
) -> None:
    plain = build_shard_folder(tmp_path / "plain", shakespeare_docs(20_000))
    from llm.train.data import TokenShards

    vocab = TokenShards(plain, "train").vocab_size
    with pytest.raises(ValueError, match=r"needs <\|mask\|> in the tokenizer"):
        train(_cfg(5), _config("encoder", vocab), plain, tmp_path / "out")
    with pytest.raises(ValueError, match="sentinel"):
        train(_cfg(5), _config("encoder_decoder", vocab), plain, tmp_path / "out2")


@pytest.mark.parametrize(("arch", "model_class"), ARCHS)
def test_each_arch_trains_on_two_ranks_with_ddp(
    shards: Path, tmp_path: Path, arch: str, model_class: type
) -> None:
    """Two gloo ranks, as the train job's Ray Train workers run it: each rank draws its own
    windows and noise, the loss falls, rank 0 validates and writes one checkpoint."""
    from dataclasses import asdict

    from llm.train.data import TokenShards
    from tests.llm.test_train_distributed import run_two_ranks

    config = _config(arch, TokenShards(shards, "train").vocab_size)
    cfg = asdict(_cfg(20)) | {"batch_size": 4}
    (log,) = run_two_ranks(
        [{"cfg": cfg, "model": config.to_dict(), "out": str(tmp_path / "ddp")}], shards, tmp_path
    )
    losses = [m["loss"] for _, m in log]
    assert [s for s, _ in log] == [5, 10, 15, 20] and losses[-1] < losses[0] - 0.3, losses
    assert log[-1][1]["val_loss"] > 0
    model = load_model(tmp_path / "ddp" / "checkpoints" / "step_00000020")
    assert isinstance(model, model_class)


def test_the_loop_refuses_an_objective_the_arch_does_not_train_on(shards: Path) -> None:
    from llm.train.pretrain import pretraining

    config = _config("decoder", 512)
    with pytest.raises(ValueError, match="objective 'masked_lm' does not fit"):
        pretraining(TrainConfig(objective="masked_lm"), config, shards)

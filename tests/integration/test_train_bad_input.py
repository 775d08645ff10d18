"""Bad train specs fail in the driver with a message naming the problem, before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.specs import TrainSpec
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import save_checkpoint, step_dir
from ray_jobs.entrypoint import JobError
from ray_jobs.train import run
from tests.integration.test_train_job import TINY_MODEL, tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shards(tmp_path_factory.mktemp("shards"))


def _spec(shards: Path, out: Path, **overrides: object) -> TrainSpec:
    return TrainSpec.model_validate(
        {"data": str(shards), "output": str(out), "model": TINY_MODEL, **overrides}
    )


def _checkpoint(out: Path, vocab: int, optimizer: str = "adamw", **model: object) -> None:
    config = ModelConfig(vocab_size=vocab, **{**TINY_MODEL, **model})
    save_checkpoint(
        step_dir(out / "checkpoints", 10),
        model=GPT(config),
        config=config,
        optimizer=None,
        trainer_state={"step": 10, "train_config": {"optimizer": optimizer}},
    )


def _vocab(shards: Path) -> int:
    from llm.train.data import TokenShards

    return TokenShards(shards, "train", verify=False).vocab_size


def test_a_checkpoint_of_another_model_is_named(shards: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path, _vocab(shards), n_layer=3)
    with pytest.raises(JobError, match=r"another model \(n_layer: 3 there, 2 here\)"):
        run(_spec(shards, tmp_path))


def test_a_checkpoint_of_another_optimizer_is_named(shards: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path, _vocab(shards), optimizer="sgd")
    with pytest.raises(JobError, match="'sgd' optimizer state, but the spec asks for 'adamw'"):
        run(_spec(shards, tmp_path))


def test_other_bad_combinations_fail_before_ray(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="global_batch_tokens"):
        run(_spec(shards, tmp_path, global_batch_tokens=1000, batch_size=4, workers=2))
    with pytest.raises(ValueError, match="fp16"):
        run(_spec(shards, tmp_path, precision="fp16"))
    with pytest.raises(JobError, match="token shards not readable"):
        run(_spec(tmp_path / "nowhere", tmp_path))

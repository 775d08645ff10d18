"""Bad train specs fail in the driver with a message naming the problem, before Ray starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.specs import TrainSpec
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.storage import StorageError
from llm.train.checkpoint import save_checkpoint, step_dir
from ray_jobs.entrypoint import JobError
from ray_jobs.train import run
from services.ray_head import free_port
from tests.integration.test_train_job import TINY_MODEL, tiny_shards
from tests.s3 import S3, s3_server


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shards(tmp_path_factory.mktemp("shards"))


def _spec(shards: Path | str, out: Path | str, **overrides: object) -> TrainSpec:
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


def test_a_mixture_the_data_cannot_give_fails_before_ray(shards: Path, tmp_path: Path) -> None:
    # shards written before sources were recorded hold one source, "default"
    mixture = {"weights": {"default": 0.5, "poems": 0.5}}
    with pytest.raises(JobError, match=r"mixture\.weights\.poems: source 'poems' is not in"):
        run(_spec(shards, tmp_path, mixture=mixture))
    with pytest.raises(JobError, match=r"mixture\.max_epochs: the run reads"):
        run(_spec(shards, tmp_path, mixture={"temperature": 1, "max_epochs": 0.01}))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    with s3_server("llmforge-in") as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server


def test_s3_shards_without_a_manifest_are_named(s3: S3, shards: Path, tmp_path: Path) -> None:
    s3.client.put_object(Bucket="llmforge-in", Key="empty/train-0000.bin", Body=b"")
    with pytest.raises(JobError, match="token shards not readable: not found: s3://llmforge-in"):
        run(_spec("s3://llmforge-in/empty", tmp_path))
    with pytest.raises(StorageError, match="bucket 'nowhere' of s3://nowhere/out does not exist"):
        run(_spec(shards, "s3://nowhere/out"))


def test_an_unreachable_endpoint_is_named(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with pytest.raises(StorageError, match="cannot reach the object store"):
        run(_spec(shards, "s3://bucket/out"))

"""The loop on two CPU processes (gloo): FSDP2 trains and resumes, DDP matches one process."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import load_model, step_dir
from llm.train.pretrain import TrainConfig, train
from tests.llm.test_loop import base_cfg, tiny_model, vocab_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, runs: list[dict[str, Any]], data: str, result: str) -> None:
    """Each run: {"cfg": TrainConfig fields, "model": ModelConfig fields, "out": folder}."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        logs: list[list[tuple[int, dict[str, float]]]] = []
        for run in runs:
            calls: list[tuple[int, dict[str, float]]] = []
            train(
                TrainConfig(**run["cfg"]),
                ModelConfig(**run["model"]),
                data,
                run["out"],
                on_log=lambda step, m, calls=calls: calls.append((step, m)),
            )
            logs.append(calls)
        if rank == 0:
            Path(result).write_text(json.dumps(logs))
    finally:
        dist.destroy_process_group()


def run_two_ranks(runs: list[dict[str, Any]], data: Path, tmp_path: Path) -> list[Any]:
    result = tmp_path / "result.json"
    mp.spawn(_worker, args=(_free_port(), runs, str(data), str(result)), nprocs=2)
    return json.loads(result.read_text())


def test_fsdp2_trains_checkpoints_and_resumes(shakespeare_shards: Path, tmp_path: Path) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    out = tmp_path / "fsdp"
    kw = {"parallelism": "fsdp", "activation_checkpointing": True, "eval_every": 12}
    first = asdict(base_cfg(steps=12, checkpoint_every=6, warmup_steps=2, **kw))
    more = {**first, "steps": 16}
    logs = run_two_ranks(
        [
            {"cfg": first, "model": model.to_dict(), "out": str(out)},
            {"cfg": more, "model": model.to_dict(), "out": str(out)},
        ],
        shakespeare_shards,
        tmp_path,
    )
    losses = [m["loss"] for _, m in logs[0]]
    assert [s for s, _ in logs[0]] == list(range(1, 13))
    assert losses[-1] < losses[0] - 0.3, losses
    assert "val_loss" in logs[0][-1][1]
    # the second call resumed from the step-12 checkpoint, which a plain process can load
    assert [s for s, _ in logs[1]] == list(range(13, 17))
    assert logs[1][-1][1]["loss"] < losses[-1]
    plain = load_model(step_dir(out / "checkpoints", 12))
    assert plain.num_parameters() == GPT(model).num_parameters()


def test_ddp_two_ranks_match_one_rank_with_the_same_global_batch(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    kw = {"steps": 10, "checkpoint_every": 10, "eval_every": 10}
    one: list[tuple[int, dict[str, float]]] = []
    train(
        base_cfg(**kw),
        model,
        shakespeare_shards,
        tmp_path / "one",
        on_log=lambda s, m: one.append((s, m)),
    )
    # 2 ranks x 4 sequences take the same 8 windows per step as 1 rank x 8 (TrainBatches
    # deals window i of the epoch's permutation to rank i % world_size); rank 0 evaluates
    # 8 batches of 4 validation windows, the 4 x 8 of the single process
    two_cfg = asdict(base_cfg(**kw, batch_size=4, eval_batches=8))
    # and 2 ranks x 2 micro-steps x 2 sequences: the step's loss all-reduce overlaps the last
    # micro-step's backward, and must still give every rank the global loss and tokens (these
    # micro-batches deal the windows to the ranks in another order, so the loss is only close)
    micro_cfg = asdict(base_cfg(**kw, batch_size=2, global_batch_tokens=8 * 32, eval_batches=8))
    two, micro = run_two_ranks(
        [
            {"cfg": two_cfg, "model": model.to_dict(), "out": str(tmp_path / "two")},
            {"cfg": micro_cfg, "model": model.to_dict(), "out": str(tmp_path / "micro")},
        ],
        shakespeare_shards,
        tmp_path,
    )
    for run, rel in ((two, 1e-4), (micro, 1e-2)):
        assert [s for s, _ in run] == [s for s, _ in one]
        for (step, a), (_, b) in zip(one, run, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=rel), step
            assert b["tokens_seen"] == a["tokens_seen"]
        assert run[-1][1]["val_loss"] == pytest.approx(one[-1][1]["val_loss"], rel=rel)


def test_fsdp2_sharded_resume_is_exact_and_matches_a_full_checkpoint(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    """A run stopped at step 6 and resumed from its DCP folder logs the same losses as an
    uninterrupted one; the sharded step-6 weights equal those a gathered checkpoint holds."""
    model = tiny_model(vocab_of(shakespeare_shards))
    # a constant rate after warmup, so a run told to stop at 6 schedules as one told 10
    kw = {"parallelism": "fsdp", "log_every": 1, "eval_every": 100, "warmup_steps": 2}
    kw |= {"lr": 3e-3, "min_lr": 3e-3}
    whole = asdict(base_cfg(steps=10, checkpoint_every=6, **kw))
    first = {**whole, "steps": 6}
    full = {**first, "fsdp_checkpoint": "full"}
    spec = model.to_dict()
    logs = run_two_ranks(
        [
            {"cfg": whole, "model": spec, "out": str(tmp_path / "whole")},
            {"cfg": first, "model": spec, "out": str(tmp_path / "split")},
            {"cfg": whole, "model": spec, "out": str(tmp_path / "split")},
            {"cfg": full, "model": spec, "out": str(tmp_path / "full")},
        ],
        shakespeare_shards,
        tmp_path,
    )
    sharded = step_dir(tmp_path / "split" / "checkpoints", 6)
    assert (sharded / "dcp" / ".metadata").is_file()
    assert not (sharded / "model.safetensors").exists()
    # two ranks, two shard files: no rank wrote the whole model
    assert len(list((sharded / "dcp").glob("*.distcp"))) == 2
    uninterrupted = [(s, m["loss"]) for s, m in logs[0]]
    resumed = [(s, m["loss"]) for s, m in logs[1] + logs[2]]
    assert resumed == uninterrupted  # fp32 on gloo: bit for bit
    gathered = load_model(step_dir(tmp_path / "full" / "checkpoints", 6)).state_dict()
    for name, tensor in load_model(sharded).state_dict().items():
        assert torch.equal(tensor, gathered[name]), name


def test_a_sharded_checkpoint_resumes_in_one_plain_process(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    """DCP reshards: a two-rank FSDP checkpoint continues as a single-process run."""
    model = tiny_model(vocab_of(shakespeare_shards))
    cfg = asdict(base_cfg(steps=6, checkpoint_every=6, parallelism="fsdp", eval_every=100))
    run_two_ranks(
        [{"cfg": cfg, "model": model.to_dict(), "out": str(tmp_path / "run")}],
        shakespeare_shards,
        tmp_path,
    )
    logs: list[tuple[int, dict[str, float]]] = []
    more = base_cfg(steps=8, checkpoint_every=8, eval_every=100, log_every=1)
    train(
        more, model, shakespeare_shards, tmp_path / "run", on_log=lambda s, m: logs.append((s, m))
    )
    assert [s for s, _ in logs] == [7, 8]
    assert (step_dir(tmp_path / "run" / "checkpoints", 8) / "model.safetensors").is_file()

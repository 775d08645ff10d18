"""Mixed precision, gradient accumulation, the spike/NaN guard, metrics and TensorBoard."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch

from llm.model.gpt import GPT
from llm.train.checkpoint import load_checkpoint, step_dir
from llm.train.precision import load_scaler_state, scaler_state
from llm.train.pretrain import train
from tests.llm.test_loop import base_cfg, tiny_model, vocab_of


class Logs:
    """Every on_log call in order (a rolled-back run logs some steps twice)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.calls.append((step, dict(metrics)))

    def steps(self) -> list[int]:
        return [s for s, _ in self.calls]


@pytest.fixture
def corrupt_loss() -> Iterator[dict[int, float]]:
    """Multiply the loss of the n-th training forward pass (1-based) by factors[n]."""
    factors: dict[int, float] = {}
    calls = 0

    def hook(module: torch.nn.Module, args: object, output: object) -> object:
        nonlocal calls
        if not isinstance(module, GPT) or not module.training:
            return None
        calls += 1
        logits, loss = output  # type: ignore[misc]
        return (logits, loss * factors[calls]) if calls in factors else None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield factors
    handle.remove()


# --- precision ------------------------------------------------------------------------------


def test_bf16_autocast_trains_with_fp32_master_weights(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    fp32, bf16 = Logs(), Logs()
    cfg = base_cfg(steps=30, checkpoint_every=30, eval_every=30)
    train(cfg, model, shakespeare_shards, tmp_path / "fp32", on_log=fp32)
    train(
        base_cfg(steps=30, checkpoint_every=30, eval_every=30, precision="bf16"),
        model,
        shakespeare_shards,
        tmp_path / "bf16",
        on_log=bf16,
    )
    first, last = bf16.calls[0][1]["loss"], bf16.calls[-1][1]["loss"]
    assert last < first - 0.5
    # the same data and init: close to fp32, but not equal, since the matmuls ran in bf16
    assert first != fp32.calls[0][1]["loss"]
    assert first == pytest.approx(fp32.calls[0][1]["loss"], rel=2e-2)
    weights = safetensors.torch.load_file(
        str(step_dir(tmp_path / "bf16/checkpoints", 30) / "model.safetensors")
    )
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_fp16_on_cpu_is_refused_before_the_first_step(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA GPU.*lacks") as info:
        train(
            base_cfg(precision="fp16"),
            tiny_model(vocab_of(shakespeare_shards)),
            shakespeare_shards,
            tmp_path,
        )
    assert "bf16" in str(info.value)
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError, match=r"TrainConfig.precision must be one of"):
        train(
            base_cfg(precision="fp8"),
            tiny_model(vocab_of(shakespeare_shards)),
            shakespeare_shards,
            tmp_path,
        )


def test_grad_scaler_state_survives_json() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler._init_growth_tracker = 3  # what a few overflow-free steps leave behind
    state = json.loads(json.dumps(scaler_state(scaler)))
    restored = torch.amp.GradScaler("cpu")
    load_scaler_state(restored, state)
    assert restored.state_dict() == scaler.state_dict()
    assert scaler_state(None) is None


# --- gradient accumulation ------------------------------------------------------------------


def test_accumulation_matches_one_big_batch(shakespeare_shards: Path, tmp_path: Path) -> None:
    """4 sequences x 2 micro-steps see the same windows as 8 sequences in one pass."""
    model = tiny_model(vocab_of(shakespeare_shards))
    big, accumulated = Logs(), Logs()
    kw = {"steps": 8, "checkpoint_every": 8, "eval_every": 8}
    train(base_cfg(**kw), model, shakespeare_shards, tmp_path / "big", on_log=big)
    out = train(
        base_cfg(**kw, batch_size=4, global_batch_tokens=8 * 32),
        model,
        shakespeare_shards,
        tmp_path / "acc",
        on_log=accumulated,
    )
    assert out["tokens_seen"] == 8 * 8 * 32
    for (s1, m1), (s2, m2) in zip(big.calls, accumulated.calls, strict=True):
        assert s1 == s2
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4), s1
        assert m2["tokens_seen"] == m1["tokens_seen"]


def test_global_batch_not_a_multiple_names_the_numbers(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    cfg = base_cfg(batch_size=4, global_batch_tokens=1000)
    with pytest.raises(ValueError, match=re.escape("global_batch_tokens (1000)")) as info:
        train(cfg, tiny_model(vocab_of(shakespeare_shards)), shakespeare_shards, tmp_path)
    assert "batch_size (4) x seq_len (32) x world_size (1) = 128" in str(info.value)


# --- spike / NaN guard ----------------------------------------------------------------------


def test_nan_loss_skips_the_optimizer_step(
    shakespeare_shards: Path, tmp_path: Path, corrupt_loss: dict[int, float]
) -> None:
    corrupt_loss[12] = math.nan
    corrupt_loss[20] = 50.0  # finite but 50x the running mean: a spike
    logs = Logs()
    cfg = base_cfg(steps=24, checkpoint_every=1, eval_every=100)
    out = train(
        cfg, tiny_model(vocab_of(shakespeare_shards)), shakespeare_shards, tmp_path, on_log=logs
    )
    by_step = dict(logs.calls)
    assert logs.steps() == list(range(1, 25))
    assert math.isnan(by_step[12]["loss"]) and by_step[11]["skipped_steps"] == 0
    assert by_step[12]["skipped_steps"] == 1 and by_step[20]["skipped_steps"] == 2
    assert by_step[24]["skipped_steps"] == 2 and by_step[24]["rollbacks"] == 0
    assert math.isfinite(by_step[24]["loss"]) and out["steps"] == 24
    # a skipped step leaves weights and optimizer state as they were
    for skipped in (12, 20):
        before = safetensors.torch.load_file(
            str(step_dir(tmp_path / "checkpoints", skipped - 1) / "model.safetensors")
        )
        after = safetensors.torch.load_file(
            str(step_dir(tmp_path / "checkpoints", skipped) / "model.safetensors")
        )
        assert all(torch.equal(before[k], after[k]) for k in before)
    _, state = load_checkpoint(step_dir(tmp_path / "checkpoints", 24))
    assert state["guard"]["skipped"] == 2


@pytest.mark.parametrize("skip_data", [True, False], ids=["skip_data", "replay"])
def test_consecutive_nans_roll_back_to_the_checkpoint(
    shakespeare_shards: Path, tmp_path: Path, corrupt_loss: dict[int, float], skip_data: bool
) -> None:
    for call in (15, 16, 17):
        corrupt_loss[call] = math.nan
    logs = Logs()
    cfg = base_cfg(steps=30, checkpoint_every=10, eval_every=100, rollback_skips_data=skip_data)
    out = train(
        cfg, tiny_model(vocab_of(shakespeare_shards)), shakespeare_shards, tmp_path, on_log=logs
    )
    # steps 15 and 16 logged as skipped; the third NaN at step 17 rolls back to step 10
    assert logs.steps() == [*range(1, 17), *range(11, 31)]
    first_11, second_11 = logs.calls[10][1], logs.calls[16][1]
    assert second_11["rollbacks"] == 1 and second_11["skipped_steps"] == 3
    assert out["steps"] == 30 and math.isfinite(logs.calls[-1][1]["loss"])
    # replaying restores the loader and RNG: step 11 sees the same batch and gives the same loss
    assert (second_11["loss"] == first_11["loss"]) == (not skip_data)


def test_divergence_without_a_checkpoint_stops_with_a_clear_error(
    shakespeare_shards: Path, tmp_path: Path, corrupt_loss: dict[int, float]
) -> None:
    for call in (3, 4, 5):
        corrupt_loss[call] = math.inf
    with pytest.raises(RuntimeError, match=r"at step 5: 3 steps in a row.*has no checkpoint"):
        train(base_cfg(), tiny_model(vocab_of(shakespeare_shards)), shakespeare_shards, tmp_path)


# --- metrics --------------------------------------------------------------------------------


def test_memory_mfu_and_tensorboard(shakespeare_shards: Path, tmp_path: Path) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    logs = Logs()
    cfg = base_cfg(steps=4, log_every=2, checkpoint_every=4, eval_every=4, tensorboard=True)
    train(cfg, model, shakespeare_shards, tmp_path / "cpu", on_log=logs)
    for _, metrics in logs.calls:
        assert "mfu" not in metrics  # no known peak for a CPU
        assert 0.05 < metrics["peak_memory_gb"] < 64
    events = list((tmp_path / "cpu/tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    logs = Logs()
    train(
        base_cfg(steps=2, log_every=2, peak_flops=1e12),
        model,
        shakespeare_shards,
        tmp_path / "peak",
        on_log=logs,
    )
    metrics = logs.calls[0][1]
    flops = GPT(model).flops_per_token()
    assert metrics["mfu"] == pytest.approx(flops * metrics["tokens_per_s"] / 1e12)


def test_compile_where_it_cannot_run_is_refused_before_the_first_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llm.model.compile
    from llm.model.config import ModelConfig
    from llm.model.gpt import GPT
    from llm.train.parallel import parallelize

    monkeypatch.setattr(llm.model.compile.shutil, "which", lambda name: None)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=8))
    with pytest.raises(ValueError, match=r"compile=True cannot run here: .*C\+\+ compiler"):
        parallelize(
            model,
            parallelism="ddp",
            world_size=1,
            activation_checkpointing=False,
            compile_model=True,
        )


def test_on_eval_follows_each_evaluation_before_its_checkpoint(
    shakespeare_shards: Path, tmp_path: Path
) -> None:
    """The hook the tune job's trials report to Ray Tune from: at every evaluation (every
    eval_every steps and the last), with val_loss, before that step's checkpoint is written."""
    events: list[tuple[str, int, bool]] = []

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        events.append(("eval", step, "val_loss" in metrics))

    def on_checkpoint(step: int, path: object, metrics: dict[str, float]) -> None:
        events.append(("checkpoint", step, "val_loss" in metrics))

    cfg = base_cfg(steps=7, log_every=1, eval_every=3, checkpoint_every=7)
    model = tiny_model(vocab_of(shakespeare_shards))
    train(cfg, model, shakespeare_shards, tmp_path, on_eval=on_eval, on_checkpoint=on_checkpoint)
    assert events == [
        ("eval", 3, True),
        ("eval", 6, True),
        ("eval", 7, True),
        ("checkpoint", 7, True),
    ]

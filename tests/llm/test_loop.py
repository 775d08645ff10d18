"""The training loop, optimizer and evaluation on a real (tiny) shard folder of tinyshakespeare."""

from __future__ import annotations

import itertools
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import latest_checkpoint, load_checkpoint, step_dir
from llm.train.data import TokenShards
from llm.train.optim import build_optimizer, cosine_lr
from llm.train.pretrain import TrainConfig, evaluate_loss, train
from tests.llm.conftest import build_shard_folder

SEQ_LEN = 32


def tiny_model(vocab_size: int, **overrides) -> ModelConfig:
    fields = {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": SEQ_LEN, **overrides}
    return ModelConfig(vocab_size=vocab_size, **fields)


def vocab_of(folder: Path) -> int:
    return TokenShards(folder, "train", verify=False).vocab_size


def base_cfg(**overrides) -> TrainConfig:
    fields = {
        "steps": 40,
        "batch_size": 8,
        "seq_len": SEQ_LEN,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 5,
        "log_every": 1,
        "eval_every": 10,
        "eval_batches": 4,
        "checkpoint_every": 20,
        "keep_last": None,  # the tests read back any step's checkpoint
    }
    return TrainConfig(**{**fields, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.logs: dict[int, dict[str, float]] = {}
        self.checkpoints: list[tuple[int, Path | None]] = []

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        assert step not in self.logs, f"step {step} logged twice"
        self.logs[step] = dict(metrics)

    def on_checkpoint(self, step: int, path: Path | None, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, path))


def checkpoint_steps(out_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out_dir / "checkpoints").glob("step_*"))


WALL_CLOCK = ("tokens_per_s", "peak_memory_gb", "mfu")


def deterministic(metrics: dict[str, float]) -> dict[str, float]:
    """Everything a run logs except the wall-clock throughput."""
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK}


# --- train() ------------------------------------------------------------------------------


def test_train_loss_falls_logs_and_checkpoints(shakespeare_shards: Path, tmp_path: Path) -> None:
    vocab = vocab_of(shakespeare_shards)
    cfg = base_cfg(steps=60, log_every=5, eval_every=20, checkpoint_every=25, warmup_steps=10)
    rec = Recorder()
    out = train(
        cfg,
        tiny_model(vocab),
        shakespeare_shards,
        tmp_path,
        on_log=rec.on_log,
        on_checkpoint=rec.on_checkpoint,
    )

    assert sorted(rec.logs) == list(range(5, 61, 5))
    losses = [rec.logs[s]["loss"] for s in sorted(rec.logs)]
    assert out["loss_history"] == losses
    assert losses[0] > math.log(vocab) - 0.5  # starts near uniform
    assert losses[-1] < losses[0] - 0.5, losses

    for step, metrics in rec.logs.items():
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen"} <= metrics.keys()
        # the logged lr is the one the step just taken used (schedule index step - 1)
        assert metrics["lr"] == pytest.approx(
            cosine_lr(step - 1, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=10, total_steps=60)
        )
        assert math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
        assert metrics["tokens_per_s"] > 0
        assert metrics["tokens_seen"] == step * cfg.batch_size * cfg.seq_len
        has_eval = step in (20, 40, 60)
        assert ("val_loss" in metrics) == has_eval, step
        if has_eval:
            assert math.isfinite(metrics["val_loss"])
            assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
            assert metrics["val_tokens"] == cfg.eval_batches * cfg.batch_size * cfg.seq_len
    assert rec.logs[60]["val_loss"] < rec.logs[20]["val_loss"]

    # checkpoints at every checkpoint_every and at the end
    assert checkpoint_steps(tmp_path) == [25, 50, 60]
    assert [s for s, _ in rec.checkpoints] == [25, 50, 60]
    assert all(p == step_dir(tmp_path / "checkpoints", s) for s, p in rec.checkpoints)
    final = step_dir(tmp_path / "checkpoints", 60)
    assert out["checkpoint"] == str(final) and latest_checkpoint(tmp_path / "checkpoints") == final
    assert out["steps"] == 60 and out["tokens_seen"] == 60 * cfg.batch_size * cfg.seq_len
    config, state = load_checkpoint(final)
    assert config == tiny_model(vocab)
    assert state["step"] == 60 and state["tokens_seen"] == out["tokens_seen"]
    assert state["train_config"]["steps"] == 60

    # a finished run called again resumes at the end and trains nothing
    again = Recorder()
    out2 = train(cfg, tiny_model(vocab), shakespeare_shards, tmp_path, on_log=again.on_log)
    assert out2["steps"] == 60 and out2["loss_history"] == [] and again.logs == {}
    assert checkpoint_steps(tmp_path) == [25, 50, 60]


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module", params=[0.0, 0.1], ids=["no_dropout", "dropout"])
def run_a(request: pytest.FixtureRequest, shakespeare_shards: Path, tmp_path_factory):
    """40 uninterrupted steps, logging every step, checkpoints at 20 and 40.

    With dropout the resumed run also depends on the restored torch RNG state."""
    model_config = tiny_model(vocab_of(shakespeare_shards), dropout=request.param)
    out_dir = tmp_path_factory.mktemp("run_a")
    rec = Recorder()
    train(base_cfg(), model_config, shakespeare_shards, out_dir, on_log=rec.on_log)
    assert sorted(rec.logs) == list(range(1, 41))
    assert checkpoint_steps(out_dir) == [20, 40]
    return model_config, out_dir, rec.logs


def assert_same_weights(a: Path, b: Path) -> None:
    wa = safetensors.torch.load_file(str(a / "model.safetensors"))
    wb = safetensors.torch.load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_resume_after_crash_is_exact(shakespeare_shards: Path, tmp_path: Path, run_a) -> None:
    model_config, a_dir, a_logs = run_a

    def crash_at_20(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 20:
            raise _Crash("simulated crash right after the step-20 checkpoint")

    # same config as run A (steps=40, so the same cosine schedule), killed after step 20
    first = Recorder()
    with pytest.raises(_Crash):
        train(
            base_cfg(),
            model_config,
            shakespeare_shards,
            tmp_path,
            on_log=first.on_log,
            on_checkpoint=crash_at_20,
        )
    assert sorted(first.logs) == list(range(1, 21))
    assert checkpoint_steps(tmp_path) == [20]

    second = Recorder()
    out = train(base_cfg(), model_config, shakespeare_shards, tmp_path, on_log=second.on_log)
    assert sorted(second.logs) == list(range(21, 41))
    assert out["steps"] == 40
    for step in range(1, 41):
        got = (first.logs if step <= 20 else second.logs)[step]
        # bit-for-bit: loss, grad_norm, lr, tokens_seen and val_loss where evaluated
        assert deterministic(got) == deterministic(a_logs[step]), step
    assert_same_weights(step_dir(a_dir / "checkpoints", 40), step_dir(tmp_path / "checkpoints", 40))


def test_resume_from_copy_with_later_checkpoints_deleted(
    shakespeare_shards: Path, tmp_path: Path, run_a
) -> None:
    model_config, a_dir, a_logs = run_a
    copy = tmp_path / "copy"
    shutil.copytree(a_dir, copy)
    for step in checkpoint_steps(copy):
        if step > 20:
            shutil.rmtree(step_dir(copy / "checkpoints", step))
    rec = Recorder()
    train(base_cfg(), model_config, shakespeare_shards, copy, on_log=rec.on_log)
    assert sorted(rec.logs) == list(range(21, 41))
    for step in range(21, 41):
        assert deterministic(rec.logs[step]) == deterministic(a_logs[step]), step
    assert_same_weights(step_dir(a_dir / "checkpoints", 40), step_dir(copy / "checkpoints", 40))


def test_vocab_mismatch_names_the_folder(shakespeare_shards: Path, tmp_path: Path) -> None:
    vocab = vocab_of(shakespeare_shards)
    for wrong in (vocab - 212, vocab + 1):
        with pytest.raises(ValueError, match=re.escape(str(shakespeare_shards))) as info:
            train(base_cfg(), tiny_model(wrong), shakespeare_shards, tmp_path)
        assert "vocab_size" in str(info.value) and str(wrong) in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


# --- evaluate_loss ------------------------------------------------------------------------


def all_val_windows(folder: Path, seq_len: int) -> torch.Tensor:
    """Every non-overlapping window of seq_len + 1 tokens, per shard, in order (by hand)."""
    val = TokenShards(folder, "val")
    length = seq_len + 1
    rows = []
    for array in val.arrays:
        tokens = np.asarray(array, dtype=np.int64)
        n = tokens.size // length
        rows.append(tokens[: n * length].reshape(n, length))
    return torch.from_numpy(np.concatenate(rows))


def test_evaluate_loss_matches_hand_computed_mean(shakespeare_shards: Path) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model(vocab_of(shakespeare_shards)))
    windows = all_val_windows(shakespeare_shards, SEQ_LEN)
    assert len(windows) > 20
    batch_size = 7
    assert len(windows) % batch_size != 0, "want a ragged last batch"

    with torch.no_grad():
        logits, _ = model(windows[:, :-1])
        per_token = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1), reduction="none"
        ).view(len(windows), SEQ_LEN)
    expected = float(per_token.double().mean())

    model.train()
    val = TokenShards(shakespeare_shards, "val")
    result = evaluate_loss(model, val, batch_size=batch_size, seq_len=SEQ_LEN)
    assert model.training, "evaluate_loss must restore train mode"
    assert result["val_tokens"] == len(windows) * SEQ_LEN
    assert result["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)

    capped = evaluate_loss(model, val, batch_size=batch_size, seq_len=SEQ_LEN, max_batches=2)
    assert capped["val_tokens"] == 2 * batch_size * SEQ_LEN
    expected_capped = float(per_token[: 2 * batch_size].double().mean())
    assert capped["val_loss"] == pytest.approx(expected_capped, rel=1e-5)


@pytest.fixture(scope="module")
def no_val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}" for i in range(400)]
    return build_shard_folder(
        tmp_path_factory.mktemp("no_val"), docs, vocab_size=300, val_fraction=0.0
    )


def test_evaluate_loss_empty_val_split_raises(no_val_folder: Path) -> None:
    val = TokenShards(no_val_folder, "val")
    assert val.num_tokens == 0
    model = GPT(tiny_model(vocab_of(no_val_folder)))
    with pytest.raises(ValueError, match=r"split 'val' has no window of 33 tokens") as info:
        evaluate_loss(model, val, batch_size=4, seq_len=SEQ_LEN)
    assert str(no_val_folder) in str(info.value)


def test_evaluate_loss_val_shorter_than_a_window_raises(shakespeare_shards: Path) -> None:
    val = TokenShards(shakespeare_shards, "val")
    model = GPT(tiny_model(vocab_of(shakespeare_shards)))
    seq_len = val.num_tokens  # one token short of a window
    with pytest.raises(ValueError, match=rf"has no window of {seq_len + 1} tokens"):
        evaluate_loss(model, val, batch_size=4, seq_len=seq_len)


def test_train_refuses_empty_val_split(no_val_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(str(no_val_folder))) as info:
        train(base_cfg(), tiny_model(vocab_of(no_val_folder)), no_val_folder, tmp_path)
    assert "val split" in str(info.value)


# --- optim --------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_build_optimizer_decay_groups(tie: bool) -> None:
    model = GPT(tiny_model(300, bias=True, tie_embeddings=tie))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0

    named = dict(model.named_parameters())  # a tied lm_head.weight appears once, as wte.weight
    assert ("lm_head.weight" in named) == (not tie)
    want_decay = {"wte.weight", "wpe.weight"} | {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    if not tie:
        want_decay.add("lm_head.weight")
    want_no_decay = {"ln_f.weight", "ln_f.bias"} | {
        f"blocks.{i}.{m}"
        for i in range(2)
        for m in (
            "ln_1.weight",
            "ln_1.bias",
            "ln_2.weight",
            "ln_2.bias",
            "attn.qkv.bias",
            "attn.proj.bias",
            "mlp.fc.bias",
            "mlp.proj.bias",
        )
    }
    assert want_decay | want_no_decay == set(named)
    assert {id(p) for p in decay["params"]} == {id(named[n]) for n in want_decay}
    assert {id(p) for p in no_decay["params"]} == {id(named[n]) for n in want_no_decay}
    # every parameter exactly once, no duplicates from the tied head
    all_ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))


def test_build_optimizer_skips_frozen_parameters() -> None:
    model = GPT(tiny_model(300, bias=True))
    model.wpe.weight.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.wpe.weight) not in ids
    assert len(ids) == len(list(model.parameters())) - 1


def test_cosine_lr_hand_computed() -> None:
    kw = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 110}
    assert cosine_lr(0, **kw) == pytest.approx(1e-4)  # lr * 1 / 10
    assert cosine_lr(4, **kw) == pytest.approx(5e-4)  # lr * 5 / 10
    assert cosine_lr(9, **kw) == pytest.approx(1e-3)  # last warmup step reaches lr
    assert cosine_lr(10, **kw) == pytest.approx(1e-3)  # cosine progress 0
    assert cosine_lr(60, **kw) == pytest.approx(5.5e-4)  # midpoint: (lr + min_lr) / 2
    # three quarters: min + 0.5 * (1 + cos(3pi/4)) * 9e-4 = 1e-4 + 0.5 * (1 - 0.70711) * 9e-4
    assert cosine_lr(85, **kw) == pytest.approx(1e-4 + 0.5 * (1 - 0.5**0.5) * 9e-4)
    assert cosine_lr(110, **kw) == pytest.approx(1e-4)  # end
    assert cosine_lr(500, **kw) == pytest.approx(1e-4)  # past the end stays at min_lr
    lrs = [cosine_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs)), "decay is monotone"
    # no warmup: step 0 is already the peak
    assert cosine_lr(0, lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)

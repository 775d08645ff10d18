"""Supervised fine-tuning of a tiny pretrained model on real Alpaca records.

The base model is pretrained for a few steps with llm.train.pretrain on tinyshakespeare shards, so
the fine-tuning starts from an llmforge checkpoint exactly as the finetune job does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from llm.finetune.config import finetune_config
from llm.finetune.data import IGNORE_INDEX, DataOptions, SFTData, prepare
from llm.finetune.samples import complete
from llm.finetune.sft import evaluate_sft_loss, finetune
from llm.model.config import ModelConfig
from llm.model.hf import export_hf, import_hf
from llm.tokenizer.bpe import eos_id, load_tokenizer
from llm.train.checkpoint import latest_checkpoint, load_checkpoint, load_model, step_dir
from llm.train.optim import cosine_lr
from llm.train.pretrain import TrainConfig, train
from tests.shared import DATA

ALPACA_FILE = DATA / "instruct" / "alpaca_5000.json"
BLOCK = 256


@pytest.fixture(scope="module")
def base(shakespeare_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT pretrained for 30 steps; its checkpoint folder."""
    vocab = load_tokenizer(shakespeare_shards / "tokenizer.json").get_vocab_size()
    config = ModelConfig(vocab_size=vocab, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64)
    cfg = TrainConfig(
        steps=30,
        batch_size=8,
        seq_len=64,
        warmup_steps=3,
        log_every=10,
        eval_every=30,
        eval_batches=2,
        checkpoint_every=30,
    )
    out = tmp_path_factory.mktemp("pretrain")
    train(cfg, config, shakespeare_shards, out)
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint is not None
    return checkpoint


@pytest.fixture(scope="module")
def alpaca(shakespeare_shards: Path) -> SFTData:
    if not ALPACA_FILE.is_file():
        pytest.skip(f"{ALPACA_FILE} absent")
    tok = load_tokenizer(shakespeare_shards / "tokenizer.json")
    options = DataOptions(max_samples=220, val_fraction=0.1)
    return prepare(ALPACA_FILE, tok, eos_id(tok), block_size=BLOCK, options=options)


def sft_config(**overrides: Any) -> TrainConfig:
    fields = {
        "steps": 30,
        "batch_size": 8,
        "lr": 2e-3,  # a tiny, barely pretrained model: far above a real fine-tune's 1e-5..1e-4
        "min_lr": 2e-4,
        "warmup_steps": 3,
        "log_every": 5,
        "eval_every": 15,
        "checkpoint_every": 15,
    }
    return finetune_config(**{**fields, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.logs: dict[int, dict[str, float]] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        assert step not in self.logs, f"step {step} logged twice"
        self.logs[step] = dict(metrics)


def run(alpaca: SFTData, base: Path, out: Path, cfg: TrainConfig, **kw: Any) -> dict[str, Any]:
    return finetune(cfg, base, alpaca.train, alpaca.val, out, pad_id=0, **kw)


@pytest.fixture(scope="module")
def tuned(
    alpaca: SFTData, base: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Recorder, Path]:
    out = tmp_path_factory.mktemp("sft")
    rec = Recorder()
    summary = run(alpaca, base, out, sft_config(), on_log=rec)
    return summary, rec, out


def test_the_response_loss_falls(tuned) -> None:
    summary, rec, _ = tuned
    assert sorted(rec.logs) == [0, 5, 10, 15, 20, 25, 30]
    base_val, tuned_val = rec.logs[0]["val_loss"], rec.logs[30]["val_loss"]
    assert tuned_val < base_val - 0.15, (base_val, tuned_val)
    losses = [rec.logs[s]["loss"] for s in (5, 10, 15, 20, 25, 30)]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.05, losses
    assert summary["steps"] == 30 and summary["checkpoint"].endswith("step_00000030")
    # the last step (index 29) ran at the warmup + cosine schedule's lr
    assert rec.logs[30]["lr"] == cosine_lr(29, lr=2e-3, min_lr=2e-4, warmup_steps=3, total_steps=30)
    assert rec.logs[30]["tokens_per_s"] > 0 and rec.logs[30]["epoch"] == pytest.approx(30 / 24)


def test_the_checkpoint_is_an_ordinary_llmforge_checkpoint(tuned, base: Path, tmp_path) -> None:
    summary, rec, out = tuned
    tuned_model = load_model(summary["checkpoint"])
    base_model = load_model(base)
    assert tuned_model.config == base_model.config
    changed = [
        name
        for name, p in tuned_model.state_dict().items()
        if not torch.equal(p, base_model.state_dict()[name])
    ]
    assert changed, "fine-tuning changed no weight"
    _, state = load_checkpoint(summary["checkpoint"])
    assert state["step"] == 30 and state["finetune"]["base_checkpoint"] == str(base)
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["step"] == 30 and best["val_loss"] == rec.logs[30]["val_loss"]
    # the Hugging Face export reads it too, and gives back the same function
    exported = import_hf(export_hf(tuned_model, tmp_path / "hf"))
    ids = torch.arange(40)[None] % tuned_model.config.vocab_size
    torch.testing.assert_close(exported(ids)[0], tuned_model(ids)[0])


def test_val_loss_is_the_mean_over_response_tokens_only(tuned, alpaca: SFTData) -> None:
    summary, rec, _ = tuned
    model = load_model(summary["checkpoint"])
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(alpaca.val)):
            tokens, trained = alpaca.val[i]
            x = torch.from_numpy(tokens[:-1].astype(np.int64))[None]
            y = torch.from_numpy(tokens[1:].astype(np.int64))
            logits, _ = model(x)
            losses = F.cross_entropy(logits[0], y, reduction="none")
            response = torch.from_numpy(trained[1:])
            total += float(losses[response].sum())
            count += int(response.sum())
    assert count == alpaca.val.target_tokens()
    by_hand = total / count
    assert by_hand == pytest.approx(rec.logs[30]["val_loss"], rel=1e-5)
    measured = evaluate_sft_loss(model, alpaca.val, batch_size=3, pad_id=0)["val_loss"]
    assert measured == pytest.approx(by_hand, rel=1e-5)
    assert IGNORE_INDEX == -100


def test_samples_show_base_and_tuned_answers(tuned, base: Path, alpaca, shakespeare_shards) -> None:
    summary, _, _ = tuned
    tok = load_tokenizer(shakespeare_shards / "tokenizer.json")
    models = {"base": load_model(base), "tuned": load_model(summary["checkpoint"])}
    samples = complete(models, alpaca.val, tok, eos=eos_id(tok), count=2, max_new_tokens=8)
    assert len(samples) == 2
    for sample in samples:
        assert sample["prompt"].endswith("### Response:\n") and sample["reference"]
        assert isinstance(sample["base_completion"], str)
        assert isinstance(sample["tuned_completion"], str)


# --- resume -------------------------------------------------------------------------------------


class _Crash(RuntimeError):
    pass


def deterministic(metrics: dict[str, float]) -> dict[str, float]:
    # throughput and the process's peak memory depend on the machine, not on the run
    return {k: v for k, v in metrics.items() if k not in ("tokens_per_s", "peak_memory_gb")}


def resume_config() -> TrainConfig:
    return sft_config(steps=12, log_every=1, eval_every=6, checkpoint_every=6)


# dropout: the resumed run must also restore the RNG state to match
RESUME_DROPOUT = 0.1


@pytest.fixture(scope="module")
def uninterrupted(alpaca, base, tmp_path_factory) -> tuple[Path, Recorder]:
    out = tmp_path_factory.mktemp("sft_a")
    rec = Recorder()
    run(alpaca, base, out, resume_config(), dropout=RESUME_DROPOUT, on_log=rec)
    return out, rec


def test_resume_after_a_crash_is_exact(alpaca, base, uninterrupted, tmp_path: Path) -> None:
    a_dir, a = uninterrupted

    def crash_at_6(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 6:
            raise _Crash("simulated crash right after the step-6 checkpoint")

    first, second = Recorder(), Recorder()
    with pytest.raises(_Crash):
        run(
            alpaca,
            base,
            tmp_path,
            resume_config(),
            dropout=RESUME_DROPOUT,
            on_log=first,
            on_checkpoint=crash_at_6,
        )
    summary = run(alpaca, base, tmp_path, resume_config(), dropout=RESUME_DROPOUT, on_log=second)
    assert sorted(first.logs) == list(range(7)) and sorted(second.logs) == list(range(7, 13))
    assert summary["steps"] == 12
    for step in range(13):
        got = (first.logs if step <= 6 else second.logs)[step]
        assert deterministic(got) == deterministic(a.logs[step]), step  # bit for bit
    wa = safetensors.torch.load_file(str(step_dir(a_dir / "checkpoints", 12) / "model.safetensors"))
    wb = safetensors.torch.load_file(
        str(step_dir(tmp_path / "checkpoints", 12) / "model.safetensors")
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # a finished run called again trains nothing
    again = Recorder()
    again_summary = run(
        alpaca, base, tmp_path, resume_config(), dropout=RESUME_DROPOUT, on_log=again
    )
    assert again_summary["steps"] == 12
    assert again.logs == {}


def test_resume_on_other_data_is_refused(alpaca, base, uninterrupted, tmp_path: Path) -> None:
    a_dir, _ = uninterrupted
    shutil.copytree(a_dir, tmp_path / "copy")
    shuffled = alpaca.train.subset(range(len(alpaca.train) - 1, -1, -1))
    with pytest.raises(ValueError, match="other training data"):
        finetune(
            resume_config(),
            base,
            shuffled,
            alpaca.val,
            tmp_path / "copy",
            pad_id=0,
            dropout=RESUME_DROPOUT,
        )


def test_dropout_override_is_saved_with_the_checkpoint(uninterrupted, base: Path) -> None:
    a_dir, _ = uninterrupted
    saved = load_model(step_dir(a_dir / "checkpoints", 12)).config
    assert saved == ModelConfig(**{**load_model(base).config.to_dict(), "dropout": RESUME_DROPOUT})


def test_bf16_autocast_trains(alpaca, base: Path, tmp_path: Path) -> None:
    rec = Recorder()
    cfg = sft_config(steps=2, log_every=1, eval_every=2, precision="bf16")
    summary = run(alpaca, base, tmp_path, cfg, on_log=rec)
    assert summary["steps"] == 2 and all(np.isfinite(rec.logs[s]["loss"]) for s in (1, 2))
    # master weights stay fp32: the checkpoint is the same format as an fp32 run's
    assert all(p.dtype == torch.float32 for p in load_model(summary["checkpoint"]).parameters())
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU"):
        run(alpaca, base, tmp_path / "fp16", sft_config(precision="fp16"))

"""Learning-rate schedules at hand-computed steps, and the optimizer's switches."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.optim import build_optimizer, linear_lr, scheduled_lr, wsd_lr

KW = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 110}


def test_linear_lr_hand_computed() -> None:
    assert linear_lr(0, **KW) == pytest.approx(1e-4)  # warmup: lr * 1 / 10
    assert linear_lr(9, **KW) == pytest.approx(1e-3)
    assert linear_lr(10, **KW) == pytest.approx(1e-3)  # decay progress 0
    assert linear_lr(60, **KW) == pytest.approx(5.5e-4)  # halfway: (lr + min_lr) / 2
    assert linear_lr(85, **KW) == pytest.approx(1e-3 - 0.75 * 9e-4)
    assert linear_lr(110, **KW) == pytest.approx(1e-4)
    assert linear_lr(500, **KW) == pytest.approx(1e-4)  # past the end stays at min_lr


def test_wsd_lr_hand_computed() -> None:
    # decay_fraction 0.2 of 110 steps: decay over the last 22 steps, from step 88
    assert wsd_lr(0, **KW) == pytest.approx(1e-4)
    assert wsd_lr(9, **KW) == pytest.approx(1e-3)
    assert wsd_lr(10, **KW) == wsd_lr(50, **KW) == wsd_lr(87, **KW) == pytest.approx(1e-3)
    assert wsd_lr(88, **KW) == pytest.approx(1e-3)  # decay progress 0
    assert wsd_lr(99, **KW) == pytest.approx(5.5e-4)  # 11 of 22 decay steps
    assert wsd_lr(110, **KW) == pytest.approx(1e-4)
    assert wsd_lr(200, **KW) == pytest.approx(1e-4)
    # decay_fraction 0.5: stable until step 55, then halfway down at step 82.5 -> 82/83
    assert wsd_lr(54, **KW, decay_fraction=0.5) == pytest.approx(1e-3)
    assert wsd_lr(66, **KW, decay_fraction=0.5) == pytest.approx(1e-3 - (11 / 55) * 9e-4)
    lrs = [wsd_lr(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_scheduled_lr_dispatches_and_rejects_unknown() -> None:
    assert scheduled_lr("linear", 60, **KW) == pytest.approx(5.5e-4)
    assert scheduled_lr("wsd", 99, **KW) == pytest.approx(5.5e-4)
    assert scheduled_lr("cosine", 60, **KW) == pytest.approx(5.5e-4)
    assert scheduled_lr("wsd", 60, **KW, decay_fraction=1.0) == pytest.approx(
        1e-3 - (60 / 110) * 9e-4
    )
    with pytest.raises(ValueError, match=r"schedule must be one of \['cosine', 'linear', 'wsd'\]"):
        scheduled_lr("step", 0, **KW)


def test_decay_embeddings_off_moves_tables_to_no_decay() -> None:
    for tie in (True, False):
        model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_embd=16, n_head=2, tie_embeddings=tie))
        decay, no_decay = build_optimizer(
            model, lr=1e-3, weight_decay=0.1, decay_embeddings=False
        ).param_groups
        named = dict(model.named_parameters())
        tables = {id(named["wte.weight"]), id(named["wpe.weight"])}
        assert tables <= {id(p) for p in no_decay["params"]}
        assert not tables & {id(p) for p in decay["params"]}
        # an untied LM head is a matmul weight, not a lookup table: it still decays
        assert ("lm_head.weight" in named) == (not tie)
        if not tie:
            assert id(named["lm_head.weight"]) in {id(p) for p in decay["params"]}
        assert id(named["blocks.0.attn.qkv.weight"]) in {id(p) for p in decay["params"]}


def test_betas_and_eps_reach_adamw() -> None:
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_embd=16, n_head=2))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    for group in opt.param_groups:
        assert group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6


@pytest.mark.parametrize("name", ["adafactor", "sgd"])
def test_other_optimizers_train_and_keep_the_decay_groups(
    name: str, shakespeare_shards: Path, tmp_path: Path
) -> None:
    from llm.train.pretrain import train
    from tests.llm.test_loop import base_cfg, tiny_model, vocab_of

    model = tiny_model(vocab_of(shakespeare_shards))
    lr = {"adafactor": 0.3, "sgd": 0.3}[name]  # Adafactor scales lr by each RMS(param)
    logs: list[float] = []
    cfg = base_cfg(steps=30, log_every=5, optimizer=name, lr=lr, min_lr=lr / 10, warmup_steps=5)
    train(cfg, model, shakespeare_shards, tmp_path, on_log=lambda s, m: logs.append(m["loss"]))
    assert logs[-1] < logs[0] - 0.5, logs
    opt = build_optimizer(GPT(model), lr=lr, weight_decay=0.1, name=name)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # a checkpoint's optimizer state only resumes under the same optimizer
    other = "adamw"
    with pytest.raises(ValueError, match=f"optimizer state is '{name}'.*asks for.*'{other}'"):
        train(replace(cfg, steps=40, optimizer=other), model, shakespeare_shards, tmp_path)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(GPT(model), lr=lr, weight_decay=0.1, name="lion")

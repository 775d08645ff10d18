"""Direct Preference Optimization (llm.finetune.dpo) and its preference records.

The loss is checked against a hand computation on a tiny model; training is checked on planted
preferences from real text: the prompt is a line of tinyshakespeare, the chosen response the
line that follows it, the rejected one a sentence of Reuters news. DPO must learn to prefer the
play's continuation on held-out pairs, starting from an llmforge checkpoint as the job does.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from llm.finetune.config import DPOConfig, finetune_config
from llm.finetune.data import IGNORE_INDEX, DataOptions, Example, TokenizedSet
from llm.finetune.dpo import (
    DPOObjective,
    collate_pairs,
    dpo_finetune,
    dpo_loss,
    preference_tuning,
    sequence_logps,
)
from llm.finetune.preference_records import preferences_from_ratings
from llm.finetune.preferences import PreferenceData, PreferenceSet, prepare_preferences
from llm.finetune.templates import chat_template, instruction_template
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.tokenizer.bpe import EOS_TOKEN, eos_id, load_tokenizer, train_bpe
from llm.train.checkpoint import load_model, save_checkpoint, step_dir
from llm.train.config import TrainConfig
from llm.train.trainer import Trainer
from tests.shared import DATA, require

SHAKESPEARE = DATA / "text" / "tinyshakespeare" / "input.txt"
REUTERS = DATA / "text" / "reuters21578" / "reuters21578.jsonl.gz"
BLOCK = 96


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: a second intra-op thread only adds hand-offs, and on a busy
    machine its spin-waiting made the training tests 20x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the loss -----------------------------------------------------------------------------------


def _tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()


def _example(prompt: list[int], response: list[int]) -> Example:
    ids = prompt + response
    return Example(ids, [False] * len(prompt) + [True] * len(response), len(prompt), False)


def _pairs() -> PreferenceSet:
    # different lengths, so the batch is padded and a pair's two rows differ in length too
    rows = [
        ([1, 2, 3], [4, 5, 6, 0], [7, 0]),
        ([8, 9], [10, 11, 0], [12, 13, 14, 15, 16, 0]),
        ([17, 18, 19, 20, 21], [22, 0], [23, 24, 0]),
    ]
    return PreferenceSet(
        TokenizedSet.from_examples([_example(p, c) for p, c, _ in rows]),
        TokenizedSet.from_examples([_example(p, r) for p, _, r in rows]),
    )


def _by_hand(model: GPT, ids: np.ndarray, trained: np.ndarray) -> float:
    """sum of log p(token) over the trained tokens, one unpadded sequence, position by position."""
    with torch.no_grad():
        logits = model(torch.from_numpy(ids.astype(np.int64))[None])[0][0]
    total = 0.0
    for t in range(1, len(ids)):
        if trained[t]:
            total += float(torch.log_softmax(logits[t - 1].double(), -1)[int(ids[t])])
    return total


@pytest.mark.parametrize(
    "options",
    [DPOConfig(beta=0.5), DPOConfig(beta=2.0, label_smoothing=0.2), DPOConfig(reference_free=True)],
)
def test_loss_equals_a_hand_computation(options: DPOConfig) -> None:
    policy, reference = _tiny(0), _tiny(1)
    data = _pairs()
    objective = DPOObjective(options)
    objective.reference = reference
    loss, tokens = objective(policy, collate_pairs(data, [0, 1, 2], pad_id=0), torch.device("cpu"))
    expected = []
    for i in range(len(data)):
        w = _by_hand(policy, *data.chosen[i])
        lose = _by_hand(policy, *data.rejected[i])
        if not options.reference_free:
            w -= _by_hand(reference, *data.chosen[i])
            lose -= _by_hand(reference, *data.rejected[i])
        h = options.beta * (w - lose)
        eps = options.label_smoothing
        expected.append(
            -(1 - eps) * math.log(1 / (1 + math.exp(-h))) - eps * math.log(1 / (1 + math.exp(h)))
        )
    assert float(loss.detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert tokens == sum(len(data.chosen[i][0]) + len(data.rejected[i][0]) - 2 for i in range(3))
    metrics = objective.take_metrics(world_size=1)
    assert metrics["reward_margin"] == pytest.approx(
        metrics["reward_chosen"] - metrics["reward_rejected"]
    )
    assert objective.take_metrics(world_size=1) == {}  # reset once taken


def test_prompt_and_padding_tokens_do_not_contribute() -> None:
    data = _pairs()
    pairs = collate_pairs(data, [0, 1, 2], pad_id=0)
    targets = pairs.batch.targets
    logits = torch.randn(*targets.shape, 40, requires_grad=True)
    logps = sequence_logps(logits, targets)
    losses, _, _ = dpo_loss(logps[:3], logps[3:], torch.zeros(3), torch.zeros(3), beta=0.1)
    losses.sum().backward()
    assert logits.grad is not None
    per_position = logits.grad.abs().sum(-1)
    masked = targets == IGNORE_INDEX
    assert torch.all(per_position[masked] == 0)
    assert torch.all(per_position[~masked] > 0)
    # response targets are exactly the response tokens: the prompt's are never scored
    for row in range(3):
        ids, trained = data.chosen[row]
        assert targets[row][targets[row] != IGNORE_INDEX].tolist() == ids[1:][trained[1:]].tolist()


# --- preference records -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tok() -> Any:
    text = ["the cat sat on the mat and the dog ran to the park"] * 20
    return train_bpe(text, vocab_size=300, special_tokens=(EOS_TOKEN,))


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_preference_records_are_read_and_bad_ones_kept_aside(small_tok, tmp_path: Path) -> None:
    long = "the cat " * 200
    path = _write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "name an animal", "chosen": "the cat", "rejected": "the mat", "id": 7},
            {
                "prompt": [{"role": "user", "content": "a pet?"}],
                "chosen": [{"role": "assistant", "content": "the dog"}],
                "rejected": [{"role": "assistant", "content": "the park"}],
            },
            "{not json",
            {"prompt": "x", "chosen": "the cat"},
            {"prompt": "x", "chosen": "the cat", "rejected": "the cat"},
            {"prompt": "x", "chosen": "the cat", "rejected": "  "},
            {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},
            {"prompt": 3, "chosen": "a", "rejected": "b"},
            {"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            {"prompt": long, "chosen": "a", "rejected": "b"},
        ],
    )
    eos = eos_id(small_tok)
    options = DataOptions(val_fraction=0.0)
    data = prepare_preferences(path, small_tok, eos, block_size=256, options=options)
    assert data.stats["records"] == 10 and data.stats["kept"] == 2 and len(data.train) == 2
    assert data.stats["rejected_by_reason"] == {
        "invalid_json": 1,
        "missing_field": 1,
        "identical_responses": 1,
        "empty_rejected": 1,
        "prompt_ends_with_assistant": 1,
        "wrong_type": 1,
        "bad_role": 1,
        "no_response_after_truncation": 1,
    }
    assert data.stats["by_format"] == {"instruction": 2, "chat": 1}  # the cut one is counted
    assert [r.index for r in data.rejected] == list(range(2, 10))
    assert all(r.detail for r in data.rejected)
    # SFT's Alpaca template renders the prompt, whose tokens are shared and never trained
    prompt = instruction_template("alpaca").render({"instruction": "name an animal", "input": ""})
    prompt_ids = small_tok.encode(prompt, add_special_tokens=False).ids
    for part, response in ((data.train.chosen, "the cat"), (data.train.rejected, "the mat")):
        ids, trained = part[0]
        response_ids = small_tok.encode(response, add_special_tokens=False).ids
        assert ids.tolist() == [*prompt_ids, *response_ids, eos]
        assert trained.tolist() == [False] * len(prompt_ids) + [True] * (len(response_ids) + 1)
    chat_prompt = chat_template("alpaca").render({"role": "user", "content": "a pet?"})
    ids, trained = data.train.chosen[1]
    assert ids[~trained].tolist() == small_tok.encode(chat_prompt, add_special_tokens=False).ids
    with pytest.raises(ValueError, match="train_on_prompt"):
        prepare_preferences(
            path, small_tok, eos, block_size=256, options=DataOptions(train_on_prompt=True)
        )


def test_ratings_become_preference_records() -> None:
    base = {"prompt": "p", "model_a": "m1", "model_b": "m2", "task": "qa"}
    ratings = [
        {**base, "id": "r1", "completion_a": "good", "completion_b": "bad", "winner": "a"},
        {**base, "id": "r2", "completion_a": "worse", "completion_b": "better", "winner": "b"},
        {**base, "id": "r3", "completion_a": "x", "completion_b": "y", "winner": "tie"},
        {**base, "id": "r4", "completion_a": "same", "completion_b": "same", "winner": "a"},
        {**base, "id": "r5", "completion_a": "", "completion_b": "y", "winner": "b"},
    ]
    records, stats = preferences_from_ratings(ratings)
    assert [(r["chosen"], r["rejected"], r["chosen_model"]) for r in records] == [
        ("good", "bad", "m1"),
        ("better", "worse", "m2"),
    ]
    assert records[0]["rating"] == "r1" and records[0]["task"] == "qa"
    assert stats == {
        "ratings": 5,
        "records": 2,
        "dropped": {"tie": 1, "identical_completions": 1, "empty_completion": 1},
    }


# --- training on planted preferences ------------------------------------------------------------


def _planted(n: int) -> list[dict[str, str]]:
    """Prompt: a line of the play; chosen: the next line; rejected: a sentence of news."""
    lines = [
        line.strip()
        for line in require(SHAKESPEARE).read_text(encoding="utf-8").splitlines()[:12000]
    ]
    verse = [
        (a, b)
        for a, b in itertools.pairwise(lines)
        if all(20 <= len(x) <= 70 and not x.endswith(":") for x in (a, b))
    ]
    news: list[str] = []
    with gzip.open(require(REUTERS), "rt", encoding="utf-8") as f:
        for line in f:
            text = " ".join(json.loads(line).get("text", "").split())
            news += [s.strip() + "." for s in text.split(". ") if 20 <= len(s) <= 70]
            if len(news) >= n:
                break
    return [
        {"prompt": a, "chosen": b, "rejected": r}
        for (a, b), r in zip(verse[: 3 * n : 3], news, strict=False)
    ][:n]


@pytest.fixture(scope="module")
def planted(shakespeare_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> PreferenceData:
    path = _write_jsonl(tmp_path_factory.mktemp("planted") / "prefs.jsonl", _planted(200))
    tok = load_tokenizer(shakespeare_shards / "tokenizer.json")
    # the prompt verbatim: a template without Alpaca's preamble keeps the sequences short
    options = DataOptions(template="{instruction}\n", val_fraction=0.2, seed=1)
    data = prepare_preferences(path, tok, eos_id(tok), block_size=BLOCK, options=options)
    assert data.stats["kept"] == 200 and data.stats["rejected"] == 0, data.stats
    return data


@pytest.fixture(scope="module")
def base(shakespeare_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny GPT saved as an llmforge checkpoint: DPO's starting point."""
    vocab = load_tokenizer(shakespeare_shards / "tokenizer.json").get_vocab_size()
    config = ModelConfig(vocab_size=vocab, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64)
    torch.manual_seed(0)
    model = GPT(config)
    folder = tmp_path_factory.mktemp("base") / "step_00000000"
    return save_checkpoint(folder, model=model, config=config, optimizer=None, trainer_state={})


def dpo_config(**overrides: Any) -> TrainConfig:
    fields = {
        "steps": 20,
        "batch_size": 8,
        "lr": 2e-3,  # a tiny model from scratch: far above a real DPO run's 1e-6..1e-5
        "min_lr": 2e-4,
        "warmup_steps": 2,
        "log_every": 5,
        "eval_every": 10,
        "checkpoint_every": 20,
    }
    return finetune_config(**{**fields, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.logs: dict[int, dict[str, float]] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        assert step not in self.logs, f"step {step} logged twice"
        self.logs[step] = dict(metrics)


def test_dpo_learns_planted_preferences_with_a_frozen_reference(
    planted: PreferenceData, base: Path, tmp_path: Path
) -> None:
    cfg = dpo_config()
    task, objective = preference_tuning(
        cfg, base, planted.train, planted.val, pad_id=0, options=DPOConfig(beta=0.5), dropout=None
    )
    trainer = Trainer(cfg, task, tmp_path)
    rec = Recorder()
    rec(0, trainer.evaluate())
    trainer.fit(on_log=rec)
    start, end = rec.logs[0], rec.logs[20]
    # policy == reference at the start: every margin is 0, the loss log 2
    assert start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["val_reward_accuracy"] == 0.0
    assert end["val_reward_accuracy"] >= 0.8, end
    assert end["val_loss"] < math.log(2) - 0.1 and end["val_reward_margin"] > 0, end
    losses = [rec.logs[s]["loss"] for s in range(5, 21, 5)]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.05, losses
    accuracies = [rec.logs[s]["reward_accuracy"] for s in range(5, 21, 5)]
    assert np.mean(accuracies[-2:]) > np.mean(accuracies[:2]), accuracies
    for name in ("reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected", "epoch"):
        assert np.isfinite(end[name]), name
    assert end["reward_margin"] == pytest.approx(end["reward_chosen"] - end["reward_rejected"])

    # the reference is the starting checkpoint, frozen, in eval mode and outside the optimizer
    reference = objective.reference
    assert reference is not None and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in reference.parameters()}
    start_weights = load_model(base).state_dict()
    for name, weight in reference.state_dict().items():
        assert torch.equal(weight, start_weights[name]), name
    assert not all(
        torch.equal(w, start_weights[n]) for n, w in trainer.model.state_dict().items()
    ), "DPO changed no weight"


# --- resume -------------------------------------------------------------------------------------


class _Crash(RuntimeError):
    pass


def _deterministic(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in ("tokens_per_s", "peak_memory_gb")}


def test_resume_after_a_crash_is_exact(planted: PreferenceData, base: Path, tmp_path: Path) -> None:
    cfg = dpo_config(steps=6, log_every=1, eval_every=3, checkpoint_every=3)
    small_val = planted.val.subset(range(8))

    def run(out: Path, **kw: Any) -> dict[str, Any]:
        return dpo_finetune(
            cfg, base, planted.train, small_val, out, pad_id=0, dropout=0.1, **kw
        )  # dropout: the resumed run must restore the RNG too

    a, first, second = Recorder(), Recorder(), Recorder()
    run(tmp_path / "a", on_log=a)

    def crash_at_3(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 3:
            raise _Crash("simulated crash right after the step-3 checkpoint")

    with pytest.raises(_Crash):
        run(tmp_path / "b", on_log=first, on_checkpoint=crash_at_3)
    summary = run(tmp_path / "b", on_log=second)
    assert sorted(first.logs) == list(range(4)) and sorted(second.logs) == [4, 5, 6]
    assert summary["steps"] == 6 and "reward_accuracy" in summary["last"]
    for step in range(7):
        got = (first.logs if step <= 3 else second.logs)[step]
        assert _deterministic(got) == _deterministic(a.logs[step]), step  # bit for bit
    wa, wb = (
        safetensors.torch.load_file(str(step_dir(out / "checkpoints", 6) / "model.safetensors"))
        for out in (tmp_path / "a", tmp_path / "b")
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    shutil.copytree(tmp_path / "a", tmp_path / "c")
    with pytest.raises(ValueError, match="DPO settings"):
        dpo_finetune(
            dataclasses.replace(cfg, steps=8),
            base,
            planted.train,
            small_val,
            tmp_path / "c",
            pad_id=0,
            dropout=0.1,
            options=DPOConfig(beta=0.3),
        )


def test_bf16_autocast_trains(planted: PreferenceData, base: Path, tmp_path: Path) -> None:
    rec = Recorder()
    cfg = dpo_config(steps=2, log_every=1, eval_every=2, precision="bf16")
    small_val = planted.val.subset(range(4))
    summary = dpo_finetune(cfg, base, planted.train, small_val, tmp_path, pad_id=0, on_log=rec)
    assert summary["steps"] == 2 and all(np.isfinite(rec.logs[s]["loss"]) for s in (1, 2))
    assert np.isfinite(rec.logs[2]["val_reward_margin"])

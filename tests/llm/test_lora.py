"""LoRA fine-tuning (llm.model.lora through peft): only the adapters train, the base stays as it
was, the adapter is saved alone and loads only onto its own base, and merging it changes no
output.

The base is a tiny random GPT saved as a checkpoint, and the task a planted one (copy the
prompt), so each run takes a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from llm.finetune.config import LoraSettings, finetune_config
from llm.finetune.data import Example, TokenizedSet
from llm.finetune.sft import finetune
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.hf import export_hf, import_hf
from llm.model.lora import add_lora, is_adapted, merged, target_names
from llm.train.checkpoint import (
    AdapterBaseMismatch,
    load_adapted,
    load_checkpoint,
    load_model,
    save_checkpoint,
    step_dir,
    weights_fingerprint,
)
from llm.train.config import TrainConfig

CONFIG = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
SETTINGS = LoraSettings(r=4, alpha=8.0, target_modules=("qkv", "proj", "fc"))
STEPS = 12


def save_base(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    return save_checkpoint(folder, model=model, config=CONFIG, optimizer=None, trainer_state={})


def copy_task(n: int, seed: int) -> TokenizedSet:
    """Prompts of 6 random tokens, each answered by the same tokens folded into 8 (2 + t % 8):
    even the answers' vocabulary alone takes the loss well down."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        prompt = [int(t) for t in rng.integers(2, CONFIG.vocab_size, 6)]
        ids = [1, *prompt, 1, *(2 + t % 8 for t in prompt)]
        trained = [False] * 8 + [True] * 6
        examples.append(Example(ids=ids, trained=trained, prompt_len=8, truncated=False))
    return TokenizedSet.from_examples(examples)


def config(**overrides: Any) -> TrainConfig:
    fields = {"steps": STEPS, "batch_size": 8, "lr": 3e-2, "min_lr": 3e-3, "warmup_steps": 2,
              "log_every": 3, "eval_every": 6, "checkpoint_every": 6}  # fmt: skip
    return finetune_config(**{**fields, **overrides})


class Recorder:
    def __init__(self) -> None:
        self.logs: dict[int, dict[str, float]] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.logs[step] = dict(metrics)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tmp_path_factory.mktemp("lora-base") / "base", seed=0)


@pytest.fixture(scope="module")
def data() -> tuple[TokenizedSet, TokenizedSet]:
    return copy_task(96, seed=1), copy_task(16, seed=2)


def run_lora(base: Path, data: tuple[TokenizedSet, TokenizedSet], out: Path, **kw: Any) -> Any:
    train, val = data
    cfg = kw.pop("cfg", config())
    return finetune(cfg, base, train, val, out, pad_id=0, lora=SETTINGS, **kw)


@pytest.fixture(scope="module")
def tuned(base, data, tmp_path_factory) -> tuple[dict[str, Any], Recorder, Path]:
    out, rec = tmp_path_factory.mktemp("lora-sft"), Recorder()
    return run_lora(base, data, out, on_log=rec), rec, out


def stripped(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapted model's base weights, by their names in a plain GPT."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_" not in k
    }


def test_only_the_adapters_train_and_are_saved(tuned, base: Path) -> None:
    summary, rec, _ = tuned
    assert rec.logs[STEPS]["val_loss"] < rec.logs[0]["val_loss"] - 0.05, rec.logs
    assert summary["method"] == "lora"
    assert 0 < summary["trainable_parameters"] < 0.2 * summary["parameters"]
    folder = Path(summary["checkpoint"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "optimizer.pt",
        "trainer_state.json",
    ]
    tensors = safetensors.torch.load_file(str(folder / "adapter_model.safetensors"))
    assert all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == summary["trainable_parameters"]
    # 2 layers x 4 adapted linears (qkv, attn.proj, fc, mlp.proj) x (A, B)
    assert len(tensors) == 16
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(tensors)  # the optimizer saw the adapters only
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_checkpoint"] == str(base)
    assert adapter["base_fingerprint"] == weights_fingerprint(base)
    assert (adapter["r"], adapter["alpha"]) == (4, 8.0)
    assert adapter["target_modules"] == sorted(SETTINGS.target_modules)
    # loaded back onto its base: the base's weights are exactly as they were
    model = load_model(folder)
    assert is_adapted(model)
    before = load_model(base).state_dict()
    after = stripped(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_gradients_reach_the_adapters_only(base: Path) -> None:
    model = add_lora(load_model(base).train(), SETTINGS)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16))
    # B starts at zero: an untrained adapter changes nothing
    torch.testing.assert_close(model(ids)[0], load_model(base)(ids)[0], rtol=0, atol=0)
    _, loss = model(ids, ids)
    assert loss is not None
    loss.backward()
    for name, p in model.named_parameters():
        adapter = ".lora_" in name
        assert p.requires_grad == adapter, name
        assert (p.grad is not None) == adapter, name
    assert target_names(model) == ["fc", "proj", "qkv"]


def test_merged_output_equals_the_adapter_output(tuned, base: Path, tmp_path: Path) -> None:
    summary, _, _ = tuned
    model = load_model(summary["checkpoint"])
    ids = torch.randint(0, CONFIG.vocab_size, (3, 20))
    with torch.no_grad():
        adapted = model(ids)[0]
        assert not torch.allclose(adapted, load_model(base)(ids)[0], atol=1e-3)  # it learned
        plain = merged(model)
        assert type(plain) is GPT and not is_adapted(plain)
        assert plain.state_dict().keys() == GPT(CONFIG).state_dict().keys()
        torch.testing.assert_close(plain(ids)[0], adapted, rtol=0, atol=1e-5)
        # the adapted model is left as it was
        assert is_adapted(model)
        torch.testing.assert_close(model(ids)[0], adapted, rtol=0, atol=0)
        # the Hugging Face export merges it, and gives back the same function
        exported = import_hf(export_hf(model, tmp_path / "hf"))
        torch.testing.assert_close(exported(ids)[0], adapted, rtol=0, atol=1e-5)


def test_an_adapter_round_trips_and_resumes_exactly(base, data, tuned, tmp_path: Path) -> None:
    summary, _, _ = tuned
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12))
    loaded = load_model(summary["checkpoint"])
    by_hand = add_lora(load_model(base), SETTINGS)
    load_checkpoint(summary["checkpoint"], model=by_hand)
    torch.testing.assert_close(by_hand(ids)[0], loaded(ids)[0], rtol=0, atol=0)
    # a crash after the step-6 checkpoint: the resumed run ends where the whole one did
    crashed = tmp_path / "crashed"

    def crash(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 6:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_lora(base, data, crashed, on_checkpoint=crash)
    assert run_lora(base, data, crashed)["steps"] == STEPS
    whole = safetensors.torch.load_file(f"{summary['checkpoint']}/adapter_model.safetensors")
    resumed = safetensors.torch.load_file(
        str(step_dir(crashed / "checkpoints", STEPS) / "adapter_model.safetensors")
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # a resume without LoRA (or with other settings) is refused
    train, val = data
    with pytest.raises(ValueError, match="LoRA settings"):
        finetune(config(steps=STEPS + 6), base, train, val, crashed, pad_id=0)


def test_an_adapter_loads_only_onto_its_own_base(tuned, base: Path, tmp_path: Path) -> None:
    summary, _, _ = tuned
    other = save_base(tmp_path / "other", seed=7)
    with pytest.raises(AdapterBaseMismatch, match=f"was trained on base {base}"):
        load_adapted(summary["checkpoint"], base=str(other))
    assert is_adapted(load_adapted(summary["checkpoint"], base=str(base)))
    with pytest.raises(ValueError, match="is a LoRA adapter"):
        load_checkpoint(summary["checkpoint"], model=GPT(CONFIG))


def test_bad_settings_are_refused_naming_the_field() -> None:
    unknown = r"lora.target_modules: \['q_proj'\] .* choose among \['fc', 'proj', 'qkv'\]"
    with pytest.raises(ValueError, match=unknown):
        add_lora(GPT(CONFIG), LoraSettings(target_modules=("q_proj",)))
    with pytest.raises(ValueError, match=r"lora\.r must be >= 1"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match=r"lora\.dropout"):
        LoraSettings(dropout=1.0)

"""Hugging Face export loads in transformers with equal logits; import gives identical weights."""

import json

import pytest
import torch

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.hf import export_hf, family_of, import_hf

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
CASES = {
    "gpt2_bias": {"bias": True},
    "gpt2_no_bias_untied": {"tie_embeddings": False, "mlp_hidden": 48},
    "llama_gqa": {"norm": "rmsnorm", "activation": "swiglu", "position": "rope", "n_kv_head": 2},
    "llama_mqa_untied_bias": {
        "norm": "rmsnorm",
        "activation": "swiglu",
        "position": "rope",
        "n_kv_head": 1,
        "bias": True,
        "tie_embeddings": False,
        "rope_theta": 500000.0,
    },
}


def perturbed(**overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        # non-zero biases and norm gains, so a mapping mistake cannot hide behind an init value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("case", CASES)
def test_export_loads_in_transformers_with_equal_logits(case, tmp_path):
    model = perturbed(**CASES[case])
    export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = "GPT2LMHeadModel" if case.startswith("gpt2") else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_import_gives_identical_weights(case, tmp_path):
    model = perturbed(**CASES[case])
    export_hf(model, tmp_path)
    back = import_hf(tmp_path)
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_import_plain_hf_checkpoint_without_our_config(tmp_path):
    model = perturbed(**CASES["llama_gqa"])
    export_hf(model, tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    del hf_config["llmforge_config"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    back = import_hf(tmp_path)
    idx = torch.randint(0, 64, (1, 10))
    torch.testing.assert_close(back(idx)[0], model(idx)[0])


def test_tokenizer_files_are_copied_with_named_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(["a small corpus for a tiny tokenizer"] * 10, trainer)
    tok.save(str(tmp_path / "tok.json"))
    eos = tok.token_to_id("<|endoftext|>")
    out = export_hf(perturbed(), tmp_path / "hf", tokenizer_file=tmp_path / "tok.json", eos_id=eos)
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tok.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos
    # transformers (and lm-evaluation-harness's hf model through it) sees the EOS by name
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == ("<|endoftext|>", eos)
    with pytest.raises(ValueError, match="eos_id 9999 is not in"):
        export_hf(perturbed(), tmp_path / "x", tokenizer_file=tmp_path / "tok.json", eos_id=9999)


def test_unexportable_config_names_fields():
    config = ModelConfig(**BASE, position="alibi", qk_norm=True)
    with pytest.raises(ValueError, match=r"position='alibi'.*qk_norm"):
        family_of(config)

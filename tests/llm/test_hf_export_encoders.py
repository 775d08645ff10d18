"""Encoders export as BERT / RoBERTa-PreLayerNorm masked LMs and encoder-decoders as BART /
mBART, loading in transformers' Auto classes with our logits; import gives identical weights."""

import json

import pytest
import torch

from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.model.hf import export_hf, family_of, import_hf
from llm.tokenizer.special import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32, embed_norm=True)
POST = dict(norm_placement="post", final_norm=False)
CASES = {
    "bert": {"arch": "encoder", **POST, "bias": True},
    "bert_no_bias_untied": {"arch": "encoder", **POST, "tie_embeddings": False, "norm_eps": 1e-12},
    "roberta-prelayernorm": {"arch": "encoder", "bias": True, "mlp_hidden": 48},
    "roberta-prelayernorm_untied": {"arch": "encoder", "tie_embeddings": False},
    "bart": {"arch": "encoder_decoder", **POST, "bias": True, "n_encoder_layer": 3},
    "mbart": {"arch": "encoder_decoder", "tie_embeddings": False},
    "mbart_bias": {"arch": "encoder_decoder", "bias": True, "mlp_hidden": 48},
}
CLASSES = {
    "bert": "BertForMaskedLM",
    "roberta-prelayernorm": "RobertaPreLayerNormForMaskedLM",
    "bart": "BartForConditionalGeneration",
    "mbart": "MBartForConditionalGeneration",
}
PAD = 1  # the masked-LM exports' pad id; the inputs below draw real tokens from 2 up


def perturbed(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        # non-zero biases and norm gains, so a mapping mistake cannot hide behind an init value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens without padding; the same, right-padded (the usual for these families); the mask."""
    torch.manual_seed(1)
    idx = torch.randint(2, 64, (2, 16))
    mask = torch.ones_like(idx)
    mask[1, 10:] = 0
    return idx, idx.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("case", CASES)
def test_export_loads_in_transformers_with_equal_logits(case, tmp_path):
    model = perturbed(**CASES[case])
    family = case.split("_")[0]
    assert family_of(model.config) == family
    export_hf(model, tmp_path, pad_id=PAD)
    idx, padded, mask = inputs()
    real = mask.bool()
    with torch.no_grad():
        if model.config.arch == "encoder":
            hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
            torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)
            theirs = hf(padded, attention_mask=mask).logits
            ours = model(padded, attention_mask=mask)[0]
        else:
            hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
            tgt = torch.randint(0, 64, (2, 12))
            theirs = hf(input_ids=idx, decoder_input_ids=tgt).logits
            torch.testing.assert_close(theirs, model(idx, tgt)[0], atol=1e-4, rtol=0)
            # the padding mask reaches the encoder and the decoder's cross-attention
            theirs = hf(input_ids=padded, attention_mask=mask, decoder_input_ids=tgt).logits
            ours = model(padded, tgt, src_mask=mask)[0]
            real = torch.ones(2, 12, dtype=torch.bool)
    assert type(hf).__name__ == CLASSES[family]
    # padding slots' outputs are nobody's business; the real tokens' must agree
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-4, rtol=0)


def test_roberta_agrees_with_left_padding_too(tmp_path):
    # RoBERTa numbers the non-pad tokens, as we do, so a left-padded row keeps its positions
    model = perturbed(**CASES["roberta-prelayernorm"])
    export_hf(model, tmp_path, pad_id=PAD)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    idx, _, _ = inputs()
    mask = torch.ones_like(idx)
    mask[1, :5] = 0
    idx = idx.masked_fill(mask == 0, PAD)
    with torch.no_grad():
        theirs, ours = hf(idx, attention_mask=mask).logits, model(idx, attention_mask=mask)[0]
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_import_gives_identical_weights(case, tmp_path):
    model = perturbed(**CASES[case])
    export_hf(model, tmp_path, pad_id=PAD)
    back = import_hf(tmp_path)
    assert type(back) is type(model) and back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("case", ["bert", "roberta-prelayernorm", "bart", "mbart"])
def test_import_plain_hf_checkpoint_without_our_config(case, tmp_path):
    model = perturbed(**CASES[case])
    export_hf(model, tmp_path, pad_id=PAD)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    del hf_config["llmforge_config"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    back = import_hf(tmp_path)
    assert family_of(back.config) == case
    idx, _, _ = inputs()
    args = (idx,) if model.config.arch == "encoder" else (idx, idx[:, :8])
    with torch.no_grad():
        torch.testing.assert_close(back(*args)[0], model(*args)[0], atol=1e-5, rtol=0)


def test_plain_checkpoint_with_an_output_bias_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    export_hf(perturbed(**CASES["bert"]), tmp_path, pad_id=PAD)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["cls.predictions.bias"] = torch.ones(64)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"cls.predictions.bias is non-zero.*no bias"):
        import_hf(tmp_path)


def test_tokenizer_config_names_mask_and_pad(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials)
    tok.train_from_iterator(["a small corpus for a tiny tokenizer"] * 10, trainer)
    tok.save(str(tmp_path / "tok.json"))
    model = perturbed(**{**CASES["roberta-prelayernorm"], "vocab_size": tok.get_vocab_size()})
    out = export_hf(model, tmp_path / "hf", tokenizer_file=tmp_path / "tok.json", eos_id=0)
    # the pad id defaults to the tokenizer's <|pad|>, which RoBERTa's positions skip
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 1
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert (hf_tok.mask_token, hf_tok.mask_token_id) == (MASK_TOKEN, 2)
    assert (hf_tok.pad_token, hf_tok.eos_token) == (PAD_TOKEN, EOS_TOKEN)
    # fill-mask end to end: transformers' tokenizer and model, our weights
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([tok.encode("a small <|mask|> for").ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids)[0], atol=1e-4, rtol=0)

    tok_no_mask = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS_TOKEN])
    tok_no_mask.train_from_iterator(["a small corpus"] * 10, trainer)
    tok_no_mask.save(str(tmp_path / "plain.json"))
    with pytest.raises(ValueError, match=r"masked LM's tokenizer needs the <\|mask\|> token"):
        export_hf(model, tmp_path / "x", tokenizer_file=tmp_path / "plain.json", pad_id=1)


def test_roberta_without_a_pad_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="roberta-prelayernorm needs pad_id"):
        export_hf(perturbed(**CASES["roberta-prelayernorm"]), tmp_path)
    with pytest.raises(ValueError, match="pad_id 64 is outside the vocabulary"):
        export_hf(perturbed(**CASES["bert"]), tmp_path, pad_id=64)


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        # pre-norm without an embedding norm: today's default encoder
        ({"arch": "encoder", "embed_norm": False}, ["bert:", "embed_norm=False", "roberta"]),
        ({"arch": "encoder", **POST}, ["bert:", "embed_norm=False (needs True)"]),
        ({"arch": "encoder", "embed_norm": True, "n_kv_head": 2}, ["n_kv_head=2 (needs n_head)"]),
        # T5-like: RMSNorm, and no learned positions
        (
            {"arch": "encoder_decoder", "embed_norm": True, "norm": "rmsnorm", "position": "rope"},
            ["bart:", "mbart:", "norm='rmsnorm'", "position='rope'"],
        ),
        ({"arch": "encoder_decoder", "embed_norm": True, "norm_eps": 1e-6}, ["norm_eps=1e-06"]),
        ({"arch": "encoder_decoder", "embed_norm": True, "qk_norm": True}, ["qk_norm=True"]),
        ({"arch": "decoder", "embed_norm": True}, ["gpt2:", "llama:", "embed_norm=True"]),
    ],
)
def test_unexportable_config_names_fields(overrides, fields, tmp_path):
    model = build_model(ModelConfig(**{**BASE, "embed_norm": False, **overrides}))
    with pytest.raises(ValueError, match="matches no Hugging Face family") as excinfo:
        export_hf(model, tmp_path)
    for field in fields:
        assert field in str(excinfo.value)


@pytest.mark.parametrize("case", ["bert", "bart"])
def test_checkpoint_with_the_new_norm_fields_loads_and_exports(case, tmp_path):
    from llm.train.checkpoint import load_model, save_checkpoint

    model = perturbed(**CASES[case])
    save_checkpoint(
        tmp_path / "ckpt", model=model, config=model.config, optimizer=None, trainer_state={}
    )
    loaded = load_model(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not hasattr(loaded, "ln_f") or isinstance(loaded.ln_f, torch.nn.Identity)
    export_hf(loaded, tmp_path / "hf", pad_id=PAD)
    assert import_hf(tmp_path / "hf").config == model.config

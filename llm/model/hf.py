"""Export to and import from the Hugging Face format: safetensors + config.json (+ tokenizer).

Every family below loads in transformers with no custom code, with logits equal to ours:

- decoders, in AutoModelForCausalLM: GPT-2 (LayerNorm, GELU, learned positions) and Llama
  (RMSNorm, SwiGLU, RoPE, grouped-query attention);
- encoders, in AutoModelForMaskedLM: BERT (post-norm, ``embed_norm=True, final_norm=False``) and
  RoBERTa-PreLayerNorm (pre-norm, ``embed_norm=True``); both LayerNorm, GELU, learned positions;
- encoder-decoders, in AutoModelForSeq2SeqLM: BART (post-norm, ``embed_norm=True,
  final_norm=False``) and mBART (pre-norm, ``embed_norm=True``), with the same three choices
  and norm_eps 1e-5, which their LayerNorms hard-code.

T5 cannot match: it adds a bucketed relative position bias inside every attention and leaves
out the 1/sqrt(head_dim) attention scale, neither of which our models have. ModernBERT cannot
either: GeGLU, no norm before the first layer's attention, and local sliding-window layers.

Positions: BERT and BART number the slots from 0 whatever the padding, ours number real tokens,
so with right padding (the usual for these) the real tokens' logits agree; padding slots differ
and are masked everywhere. RoBERTa numbers non-pad tokens after pad_token_id as ours do, so it
agrees with left padding too, given padding uses pad_token_id. Their (unused) position rows
before ours are written as zeros, and BERT's token-type embedding as a zero row.

The exported config.json also carries our own ModelConfig under "llmforge_config", so importing
an export gives back exactly the config it came from; plain Hugging Face checkpoints of these
families are mapped, when every tensor has a place in our models (no non-zero output bias).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from llm.model import hf_encoders
from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.model.gpt import GPT
from llm.model.lora import is_adapted, merged
from llm.tokenizer.special import BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN

OUR_KEY = "llmforge_config"
_DECODER = {"arch": "decoder", "norm_placement": "pre", "embed_norm": False, "final_norm": True}
_LEARNED_GELU = {"norm": "layernorm", "activation": "gelu", "position": "learned"}
_BERT_LIKE = {**_LEARNED_GELU, "embed_norm": True}
_POST = {"norm_placement": "post", "final_norm": False}
_PRE = {"norm_placement": "pre", "final_norm": True}
# what each family fixes; a config that differs on any of these cannot be exported as it
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {**_DECODER, **_LEARNED_GELU},
    "llama": {**_DECODER, "norm": "rmsnorm", "activation": "swiglu", "position": "rope"},
    "bert": {"arch": "encoder", **_BERT_LIKE, **_POST},
    "roberta-prelayernorm": {"arch": "encoder", **_BERT_LIKE, **_PRE},
    # their LayerNorms are built with PyTorch's default eps, whatever the config says
    "bart": {"arch": "encoder_decoder", **_BERT_LIKE, **_POST, "norm_eps": 1e-5},
    "mbart": {"arch": "encoder_decoder", **_BERT_LIKE, **_PRE, "norm_eps": 1e-5},
}
# the Hugging Face class that loads each family, and the Auto class that finds it
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "bert": "BertForMaskedLM",
    "roberta-prelayernorm": "RobertaPreLayerNormForMaskedLM",
    "bart": "BartForConditionalGeneration",
    "mbart": "MBartForConditionalGeneration",
}
# the special tokens an encoder's tokenizer_config.json names, where the vocabulary has them
ROLES = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "bos_token": BOS_TOKEN}


def family_of(config: ModelConfig) -> str:
    """The Hugging Face family a config matches, or a ValueError naming the fields that differ
    from each family of its arch."""
    problems: dict[str, list[str]] = {}
    for family, wanted in FAMILIES.items():
        if wanted["arch"] != config.arch:
            continue
        fixed = {**wanted, "qk_norm": False}
        problems[family] = [
            f"{k}={getattr(config, k)!r} (needs {v!r})"
            for k, v in fixed.items()
            if getattr(config, k) != v
        ]
        # only Llama has separate key/value head counts
        if family != "llama" and config.kv_heads != config.n_head:
            problems[family].append(f"n_kv_head={config.n_kv_head} (needs n_head)")
        if not problems[family]:
            return family
    detail = "; ".join(f"{f}: {', '.join(p)}" for f, p in problems.items())
    raise ValueError(f"ModelConfig matches no Hugging Face family ({detail})")


def _gpt2_config(c: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.hidden_dim,
        # our GELU is the exact erf form, not GPT-2's tanh approximation ("gelu_new")
        "activation_function": "gelu",
        "layer_norm_epsilon": c.norm_eps,
        "embd_pdrop": c.dropout_at("embd"),
        "attn_pdrop": c.dropout_at("attn"),
        "resid_pdrop": c.dropout_at("resid"),
        "tie_word_embeddings": c.tie_embeddings,
    }


def _llama_config(c: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": c.bias,
        "mlp_bias": c.bias,
        "attention_dropout": c.dropout_at("attn"),
        "tie_word_embeddings": c.tie_embeddings,
    }


def _gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2 stores its linear layers as Conv1D, (in, out): our weights transposed. It always
    has biases, so a bias-free config exports zeros, which compute the same thing."""
    c = model.config
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"]}
    ours = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj"}
    ours |= {"mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(c.n_layer):
        for hf, name in ours.items():
            w = sd[f"blocks.{i}.{name}.weight"]
            out[f"transformer.h.{i}.{hf}.weight"] = w if hf.startswith("ln") else w.t()
            bias = sd.get(f"blocks.{i}.{name}.bias")
            width = w.shape[0]
            out[f"transformer.h.{i}.{hf}.bias"] = bias if bias is not None else torch.zeros(width)
    out["transformer.ln_f.weight"] = sd["ln_f.weight"]
    out["transformer.ln_f.bias"] = sd.get("ln_f.bias", torch.zeros(c.n_embd))
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_tensors(model: GPT) -> dict[str, torch.Tensor]:
    c = model.config
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["ln_f.weight"]}
    kv = c.kv_heads * c.head_dim
    for i in range(c.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "ln_1.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "ln_2.weight"]
        for kind in ("weight", "bias") if c.bias else ("weight",):
            q, k, v = sd[f"{src}attn.qkv.{kind}"].split([c.n_embd, kv, kv])
            gate, up = sd[f"{src}mlp.fc.{kind}"].chunk(2)
            parts = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v}
            parts |= {"self_attn.o_proj": sd[f"{src}attn.proj.{kind}"], "mlp.gate_proj": gate}
            parts |= {"mlp.up_proj": up, "mlp.down_proj": sd[f"{src}mlp.proj.{kind}"]}
            out |= {f"{dst}{name}.{kind}": t for name, t in parts.items()}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _pad_id(family: str, pad_id: int | None, vocab: dict[str, int], size: int) -> int:
    """The pad id a masked-LM family's config.json names; RoBERTa's positions depend on it."""
    if pad_id is None:
        pad_id = vocab.get(PAD_TOKEN)
    if pad_id is None:
        if family == "roberta-prelayernorm":
            raise ValueError(
                f"exporting as roberta-prelayernorm needs pad_id (or a tokenizer with "
                f"{PAD_TOKEN}): RoBERTa numbers positions after the pad id and skips tokens "
                "equal to it, so it must be an id the text never contains"
            )
        pad_id = 0  # BERT uses it only to zero that embedding's gradient
    if not 0 <= pad_id < size:
        raise ValueError(f"pad_id {pad_id} is outside the vocabulary ({size})")
    return pad_id


def export_hf(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> Path:
    """Write model.safetensors, config.json and, given a tokenizer.json, the tokenizer files.

    model is any llmforge model (GPT, EncoderLM, EncoderDecoder) whose config matches a family;
    a GPT carrying a LoRA adapter is exported with the adapter merged into its weights.
    pad_id is the masked-LM families' padding id (default: the tokenizer's <|pad|>, else 0);
    the seq2seq families pad with id 0, our decoder's start token.
    """
    if is_adapted(model):  # a LoRA model is exported merged: HF's GPT-2 and Llama have no LoRA
        model = merged(cast(GPT, model))
    config = model.config
    if not isinstance(config, ModelConfig):
        raise TypeError(f"export_hf needs an llmforge model with a ModelConfig, got {model!r}")
    family = family_of(config)
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab() if tokenizer_file else {}
    if eos_id is not None and vocab and eos_id not in vocab.values():
        raise ValueError(f"eos_id {eos_id} is not in {tokenizer_file}")
    sd = model.state_dict()
    if family in ("gpt2", "llama"):
        gpt = cast(GPT, model)
        tensors = _gpt2_tensors(gpt) if family == "gpt2" else _llama_tensors(gpt)
        hf_config = _gpt2_config(config) if family == "gpt2" else _llama_config(config)
        # without explicit ids transformers assumes GPT-2's 50256, outside a small vocabulary
        hf_config |= {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
        pad = eos_id
    else:
        pad = _pad_id(family, pad_id, vocab, config.vocab)
        tensors = hf_encoders.export_tensors(sd, config, family, pad)
        hf_config = hf_encoders.hf_config(config, family, pad, eos_id)
        pad = hf_config["pad_token_id"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views that share storage, so every tensor gets its own copy
    save_file(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    hf_config = {"architectures": [ARCHITECTURES[family]], "model_type": family} | hf_config
    hf_config |= {"torch_dtype": "float32", OUR_KEY: config.to_dict()}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, out / "tokenizer.json")
        tok_config = _tokenizer_config(config, vocab, eos_id, pad)
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return out


def _tokenizer_config(
    config: ModelConfig, vocab: dict[str, int], eos_id: int | None, pad_id: int | None
) -> dict[str, Any]:
    """The special tokens by name: without them transformers' tokenizer has no EOS/BOS (and
    lm-evaluation-harness's hf model fails on its first request), and no mask for fill-mask."""
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.block_size,
    }
    by_id = {i: token for token, i in vocab.items()}
    if config.arch == "decoder":
        if eos_id is not None:
            token = by_id[eos_id]
            tok_config |= {"eos_token": token, "bos_token": token, "pad_token": token}
        return tok_config
    tok_config |= {role: token for role, token in ROLES.items() if token in vocab}
    if eos_id is not None:
        tok_config["eos_token"] = by_id[eos_id]
    if pad_id is not None and pad_id in by_id:
        tok_config["pad_token"] = by_id[pad_id]
    if config.arch == "encoder":
        if MASK_TOKEN not in vocab:
            raise ValueError(f"a masked LM's tokenizer needs the {MASK_TOKEN} token")
        tok_config["mask_token"] = MASK_TOKEN
    return tok_config


def _config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    if OUR_KEY in hf:
        return ModelConfig.from_dict(hf[OUR_KEY])
    tie = bool(hf.get("tie_word_embeddings", True))
    if hf.get("model_type") == "gpt2":
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
            bias=True,
            tie_embeddings=tie,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    if hf.get("model_type") == "llama":
        rope = hf.get("rope_parameters") or {}
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            n_kv_head=hf.get("num_key_value_heads"),
            mlp_hidden=hf["intermediate_size"],
            bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=tie,
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            activation="swiglu",
            position="rope",
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        )
    if hf.get("model_type") in FAMILIES:
        return hf_encoders.config_from_hf(hf)
    raise ValueError(
        f"config.json model_type must be one of {list(FAMILIES)}, got {hf.get('model_type')!r}"
    )


def _from_gpt2(t: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {"wte.weight": t["transformer.wte.weight"], "wpe.weight": t["transformer.wpe.weight"]}
    names = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj"}
    names |= {"mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(c.n_layer):
        for ours, hf in names.items():
            w = t[f"transformer.h.{i}.{hf}.weight"]
            sd[f"blocks.{i}.{ours}.weight"] = w if ours.startswith("ln") else w.t()
            sd[f"blocks.{i}.{ours}.bias"] = t[f"transformer.h.{i}.{hf}.bias"]
    sd["ln_f.weight"], sd["ln_f.bias"] = t["transformer.ln_f.weight"], t["transformer.ln_f.bias"]
    return sd


def _drop_zero_biases(sd: dict[str, torch.Tensor], wanted: set[str]) -> None:
    """Drop the biases the model has no place for (ModelConfig.bias=False): zeros only."""
    for key in [k for k in sd if k.endswith(".bias") and k not in wanted]:
        if torch.count_nonzero(sd[key]):
            raise ValueError(f"{key} is non-zero but ModelConfig.bias is False")
        del sd[key]


def _from_llama(t: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {"wte.weight": t["model.embed_tokens.weight"], "ln_f.weight": t["model.norm.weight"]}
    for i in range(c.n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        sd[dst + "ln_1.weight"] = t[src + "input_layernorm.weight"]
        sd[dst + "ln_2.weight"] = t[src + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias") if c.bias else ("weight",):
            attn = [t[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            sd[f"{dst}attn.qkv.{kind}"] = torch.cat(attn)
            sd[f"{dst}attn.proj.{kind}"] = t[f"{src}self_attn.o_proj.{kind}"]
            mlp = [t[f"{src}mlp.{p}_proj.{kind}"] for p in ("gate", "up")]
            sd[f"{dst}mlp.fc.{kind}"] = torch.cat(mlp)
            sd[f"{dst}mlp.proj.{kind}"] = t[f"{src}mlp.down_proj.{kind}"]
    return sd


def import_hf(directory: str | Path) -> nn.Module:
    """Build our model from a Hugging Face folder (config.json + model.safetensors) of any
    family above: a GPT, an EncoderLM or an EncoderDecoder, in eval mode."""
    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    config = _config_from_hf(hf)
    tensors = load_file(str(directory / "model.safetensors"))
    family = family_of(config)
    if family == "gpt2":
        sd = _from_gpt2(tensors, config)
    elif family == "llama":
        sd = _from_llama(tensors, config)
    else:
        pad = hf.get("pad_token_id") or 0
        sd = hf_encoders.import_tensors(tensors, config, family, pad)
    if not config.tie_embeddings and family in ("gpt2", "llama"):
        sd["lm_head.weight"] = tensors["lm_head.weight"]
    model = build_model(config)
    _drop_zero_biases(sd, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # a tied head is the embedding, so its key may be absent; anything else must match exactly
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()

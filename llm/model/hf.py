"""Export to and import from the Hugging Face format: safetensors + config.json (+ tokenizer).

Two families load in transformers' AutoModelForCausalLM with no custom code: GPT-2 (LayerNorm,
GELU, learned positions) and Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention). The
exported config.json also carries our own ModelConfig under "llmforge_config", so importing an
export gives back exactly the config it came from; plain Hugging Face checkpoints are mapped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from llm.model.config import ModelConfig
from llm.model.gpt import GPT

OUR_KEY = "llmforge_config"
# what each family fixes; a config that differs on any of these cannot be exported as it
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "activation": "gelu", "position": "learned"},
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rope"},
}
COMMON = {"arch": "decoder", "norm_placement": "pre", "qk_norm": False}


def family_of(config: ModelConfig) -> str:
    """The Hugging Face family a config matches, or a ValueError naming the fields that differ."""
    problems: dict[str, list[str]] = {}
    for family, fixed in FAMILIES.items():
        wanted = {**COMMON, **fixed}
        problems[family] = [
            f"{k}={getattr(config, k)!r} (needs {v!r})"
            for k, v in wanted.items()
            if getattr(config, k) != v
        ]
        if family == "gpt2" and config.kv_heads != config.n_head:
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


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    eos_id: int | None = None,
) -> Path:
    """Write model.safetensors, config.json and, given a tokenizer.json, the tokenizer files."""
    config = model.config
    family = family_of(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _gpt2_tensors(model) if family == "gpt2" else _llama_tensors(model)
    # safetensors refuses views that share storage, so every tensor gets its own copy
    save_file(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    hf_config = _gpt2_config(config) if family == "gpt2" else _llama_config(config)
    # without explicit ids transformers assumes GPT-2's 50256, outside a small vocabulary
    hf_config |= {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    hf_config |= {"torch_dtype": "float32", OUR_KEY: config.to_dict()}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, out / "tokenizer.json")
        tok_config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": config.block_size,
        }
        if eos_id is not None:
            # the special tokens by name: without them transformers' tokenizer has no EOS/BOS,
            # and lm-evaluation-harness's hf model fails on its first request
            token = Tokenizer.from_file(str(tokenizer_file)).id_to_token(eos_id)
            if token is None:
                raise ValueError(f"eos_id {eos_id} is not in {tokenizer_file}")
            tok_config |= {"eos_token": token, "bos_token": token, "pad_token": token}
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return out


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
    raise ValueError(
        f"config.json model_type must be 'gpt2' or 'llama', got {hf.get('model_type')!r}"
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
    if not c.bias:
        _drop_zero_biases(sd)
    return sd


def _drop_zero_biases(sd: dict[str, torch.Tensor]) -> None:
    for key in [k for k in sd if k.endswith(".bias")]:
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


def import_hf(directory: str | Path) -> GPT:
    """Build a GPT from a Hugging Face GPT-2 or Llama folder (config.json + model.safetensors)."""
    directory = Path(directory)
    config = _config_from_hf(json.loads((directory / "config.json").read_text()))
    tensors = load_file(str(directory / "model.safetensors"))
    family = family_of(config)
    sd = _from_gpt2(tensors, config) if family == "gpt2" else _from_llama(tensors, config)
    if not config.tie_embeddings:
        sd["lm_head.weight"] = tensors["lm_head.weight"]
    model = GPT(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # a tied head is the embedding, so its key may be absent; anything else must match exactly
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()

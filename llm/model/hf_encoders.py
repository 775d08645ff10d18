"""The encoder families of llm.model.hf: BERT and RoBERTa-PreLayerNorm (masked LM), BART and
mBART (sequence-to-sequence). llm.model.hf decides the family; this maps configs and tensors.

Most tensors are one-to-one; a table per family maps each Hugging Face module to ours, for the
weight and the bias alike. Our fused projections (qkv, cross-attention kv) split into theirs.
Biases that our bias-free config lacks are written as zeros, which compute the same thing, and
read back only when zero. Tables with unused leading rows (positions before RoBERTa's pad id+1,
BART's offset of 2) get zeros there; BERT's token-type row is folded into our positions.
"""

from __future__ import annotations

from typing import Any

import torch

from llm.model.config import ModelConfig
from llm.model.encoders import START_ID

MASKED_LM = ("bert", "roberta-prelayernorm")
SEQ2SEQ = ("bart", "mbart")
# BART and mBART look position p up at row p + 2 (fairseq kept rows 0 and 1 for padding)
BART_OFFSET = 2
_ROOT = {"bert": "bert.", "roberta-prelayernorm": "roberta_prelayernorm."}

Names = dict[str, str]  # Hugging Face module -> our module; weight and bias alike
Splits = dict[str, list[str]]  # our fused module -> the Hugging Face modules, in order


def position_offset(family: str, pad_id: int) -> int:
    """Their row of our position 0."""
    if family == "roberta-prelayernorm":
        return pad_id + 1
    return BART_OFFSET if family in SEQ2SEQ else 0


def _masked_lm_names(c: ModelConfig, family: str) -> tuple[Names, Splits]:
    root = _ROOT[family]
    names = {root + "embeddings.LayerNorm": "embed.ln_embed"}
    splits: Splits = {}
    for i in range(c.n_layer):
        hf, ours = f"{root}encoder.layer.{i}.", f"blocks.{i}."
        names |= {hf + "attention.output.dense": ours + "attn.proj"}
        names |= {hf + "intermediate.dense": ours + "mlp.fc"}
        names |= {hf + "output.dense": ours + "mlp.proj"}
        if family == "bert":  # post-norm: each sublayer's norm sits on its output
            names |= {hf + "attention.output.LayerNorm": ours + "ln_1"}
            names |= {hf + "output.LayerNorm": ours + "ln_2"}
        else:
            names |= {hf + "attention.LayerNorm": ours + "ln_1"}
            names |= {hf + "intermediate.LayerNorm": ours + "ln_2"}
        splits[ours + "attn.qkv"] = [f"{hf}attention.self.{p}" for p in ("query", "key", "value")]
    if family == "bert":
        names |= {"cls.predictions.transform.dense": "head_dense"}
        names |= {"cls.predictions.transform.LayerNorm": "head_norm"}
    else:
        names |= {root + "LayerNorm": "ln_f", "lm_head.dense": "head_dense"}
        names |= {"lm_head.layer_norm": "head_norm"}
    return names, splits


def _seq2seq_names(c: ModelConfig, family: str) -> tuple[Names, Splits]:
    # ours shares one embedding norm between encoder and decoder; theirs has one in each
    sides = ("encoder", "decoder")
    names = {f"model.{side}.layernorm_embedding": "embed.ln_embed" for side in sides}
    if family == "mbart":
        names |= {"model.encoder.layer_norm": "ln_enc", "model.decoder.layer_norm": "ln_f"}
    splits: Splits = {}
    layers = [("encoder", i) for i in range(c.encoder_layers)]
    for side, i in layers + [("decoder", i) for i in range(c.n_layer)]:
        hf, ours = f"model.{side}.layers.{i}.", f"{side}.{i}."
        names |= {hf + "self_attn.out_proj": ours + "attn.proj"}
        names |= {hf + "self_attn_layer_norm": ours + "ln_1"}
        names |= {hf + "fc1": ours + "mlp.fc", hf + "fc2": ours + "mlp.proj"}
        names |= {hf + "final_layer_norm": ours + "ln_2"}
        splits[ours + "attn.qkv"] = [f"{hf}self_attn.{p}_proj" for p in ("q", "k", "v")]
        if side == "decoder":
            names |= {hf + "encoder_attn.q_proj": ours + "cross_attn.q"}
            names |= {hf + "encoder_attn.out_proj": ours + "cross_attn.proj"}
            names |= {hf + "encoder_attn_layer_norm": ours + "ln_cross"}
            splits[ours + "cross_attn.kv"] = [f"{hf}encoder_attn.{p}_proj" for p in ("k", "v")]
    return names, splits


def _names(c: ModelConfig, family: str) -> tuple[Names, Splits]:
    return _masked_lm_names(c, family) if family in MASKED_LM else _seq2seq_names(c, family)


def _ours(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Our tensor, or zeros for a bias the config leaves out."""
    if key in sd:
        return sd[key]
    if key.endswith(".bias"):
        return torch.zeros(sd[key.removesuffix(".bias") + ".weight"].shape[0])
    raise KeyError(key)


def _embedding_keys(family: str) -> tuple[str, list[str], str, str]:
    """Token embedding, position tables, output projection and output bias, by family."""
    if family in SEQ2SEQ:
        positions = [f"model.{side}.embed_positions.weight" for side in ("encoder", "decoder")]
        return "model.shared.weight", positions, "lm_head.weight", "final_logits_bias"
    emb = _ROOT[family] + "embeddings."
    head = "cls.predictions." if family == "bert" else "lm_head."
    positions = [emb + "position_embeddings.weight"]
    return emb + "word_embeddings.weight", positions, head + "decoder.weight", head + "bias"


def export_tensors(
    sd: dict[str, torch.Tensor], c: ModelConfig, family: str, pad_id: int
) -> dict[str, torch.Tensor]:
    """Their state dict from ours (sd)."""
    names, splits = _names(c, family)
    out: dict[str, torch.Tensor] = {}
    for hf, ours in names.items():
        for kind in ("weight", "bias"):
            out[f"{hf}.{kind}"] = _ours(sd, f"{ours}.{kind}")
    for ours, parts in splits.items():
        for kind in ("weight", "bias"):
            chunks = _ours(sd, f"{ours}.{kind}").chunk(len(parts))
            out |= {f"{hf}.{kind}": t for hf, t in zip(parts, chunks, strict=True)}
    wte, positions, head, head_bias = _embedding_keys(family)
    out[wte] = sd["embed.wte.weight"]
    lead = torch.zeros(position_offset(family, pad_id), c.n_embd)
    for key in positions:
        out[key] = torch.cat((lead, sd["embed.wpe.weight"]))
    if family in SEQ2SEQ:
        out["final_logits_bias"] = torch.zeros(1, c.vocab)
        # transformers ties these to model.shared; written too, so nothing loads uninitialised
        out |= {f"model.{side}.embed_tokens.weight": out[wte] for side in ("encoder", "decoder")}
    else:
        out[_ROOT[family] + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, c.n_embd)
        # the projection's bias is tied to the head's only while the embeddings are tied
        out[head_bias] = out[head.removesuffix("weight") + "bias"] = torch.zeros(c.vocab)
    if not c.tie_embeddings:
        out[head] = sd["lm_head.weight"]
    return out


def _same(sd: dict[str, torch.Tensor], key: str, value: torch.Tensor, source: str) -> None:
    """Set sd[key], refusing a second, different value: a tensor ours shares, theirs has twice."""
    if key in sd and not torch.equal(sd[key], value):
        raise ValueError(f"{source} differs from the tensor llmforge shares with it as {key}")
    sd[key] = value


def import_tensors(
    t: dict[str, torch.Tensor], c: ModelConfig, family: str, pad_id: int
) -> dict[str, torch.Tensor]:
    """Our state dict from theirs (t), including zero biases the caller drops where unwanted."""
    names, splits = _names(c, family)
    sd: dict[str, torch.Tensor] = {}
    for hf, ours in names.items():
        for kind in ("weight", "bias"):
            _same(sd, f"{ours}.{kind}", t[f"{hf}.{kind}"], f"{hf}.{kind}")
    for ours, parts in splits.items():
        for kind in ("weight", "bias"):
            sd[f"{ours}.{kind}"] = torch.cat([t[f"{hf}.{kind}"] for hf in parts])
    wte, positions, head, head_bias = _embedding_keys(family)
    sd["embed.wte.weight"] = t[wte]
    for side in ("encoder", "decoder"):
        key = f"model.{side}.embed_tokens.weight"
        if family in SEQ2SEQ and key in t:
            _same(sd, "embed.wte.weight", t[key], key)
    start = position_offset(family, pad_id)
    for key in positions:
        table = t[key][start : start + c.block_size]
        if family in MASKED_LM:
            # BERT adds token type 0's row to every token; ours has none, so positions carry it
            table = table + t[_ROOT[family] + "embeddings.token_type_embeddings.weight"][0]
        _same(sd, "embed.wpe.weight", table, key)
    for key in (head_bias, head.removesuffix("weight") + "bias"):
        if key in t and torch.count_nonzero(t[key]):
            raise ValueError(f"{key} is non-zero, but llmforge's output layer has no bias")
    if not c.tie_embeddings:
        sd["lm_head.weight"] = t[head]
    return sd


def hf_config(c: ModelConfig, family: str, pad_id: int, eos_id: int | None) -> dict[str, Any]:
    """config.json for a masked-LM or seq2seq family."""
    dropouts = {"attn": c.dropout_at("attn"), "resid": c.dropout_at("resid")}
    if family in MASKED_LM:
        return {
            "vocab_size": c.vocab,
            "hidden_size": c.n_embd,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "intermediate_size": c.hidden_dim,
            # our GELU, in the MLP and the head, is the exact erf form
            "hidden_act": "gelu",
            "hidden_dropout_prob": dropouts["resid"],
            "attention_probs_dropout_prob": dropouts["attn"],
            "max_position_embeddings": c.block_size + position_offset(family, pad_id),
            "type_vocab_size": 1,
            "layer_norm_eps": c.norm_eps,
            "position_embedding_type": "absolute",
            "pad_token_id": pad_id,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
            "tie_word_embeddings": c.tie_embeddings,
        }
    return {
        "vocab_size": c.vocab,
        "d_model": c.n_embd,
        "encoder_layers": c.encoder_layers,
        "decoder_layers": c.n_layer,
        "encoder_attention_heads": c.n_head,
        "decoder_attention_heads": c.n_head,
        "encoder_ffn_dim": c.hidden_dim,
        "decoder_ffn_dim": c.hidden_dim,
        "activation_function": "gelu",
        "max_position_embeddings": c.block_size,
        "dropout": dropouts["resid"],
        "attention_dropout": dropouts["attn"],
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "scale_embedding": False,
        "is_encoder_decoder": True,
        # our decoder starts from id 0 and shift_right pads ignored labels with it, as T5 does;
        # transformers' shift_tokens_right does the same given these two ids
        "decoder_start_token_id": START_ID,
        "pad_token_id": START_ID,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "forced_eos_token_id": None,
        "tie_word_embeddings": c.tie_embeddings,
    }


def _need(hf: dict[str, Any], key: str, value: Any) -> None:
    if hf.get(key, value) != value:
        raise ValueError(
            f"config.json {key}={hf[key]!r} has no llmforge equivalent (needs {value!r})"
        )


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our config for a plain Hugging Face config.json of one of these families."""
    family = hf["model_type"]
    tie = bool(hf.get("tie_word_embeddings", True))
    common: dict[str, Any] = {"vocab_size": hf["vocab_size"], "tie_embeddings": tie}
    common |= {"bias": True, "embed_norm": True}
    if family in MASKED_LM:
        _need(hf, "hidden_act", "gelu")
        _need(hf, "position_embedding_type", "absolute")
        offset = position_offset(family, hf.get("pad_token_id") or 0)
        post = family == "bert"
        return ModelConfig(
            **common,
            arch="encoder",
            block_size=hf["max_position_embeddings"] - offset,
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            mlp_hidden=hf["intermediate_size"],
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            norm_placement="post" if post else "pre",
            final_norm=not post,
        )
    _need(hf, "activation_function", "gelu")
    _need(hf, "scale_embedding", False)
    for key in ("attention_heads", "ffn_dim"):
        enc, dec = hf[f"encoder_{key}"], hf[f"decoder_{key}"]
        if enc != dec:
            # one ModelConfig describes both stacks
            raise ValueError(f"config.json encoder_{key}={enc} and decoder_{key}={dec} differ")
    post = family == "bart"
    return ModelConfig(
        **common,
        arch="encoder_decoder",
        block_size=hf["max_position_embeddings"],
        n_layer=hf["decoder_layers"],
        n_encoder_layer=hf["encoder_layers"],
        n_head=hf["encoder_attention_heads"],
        n_embd=hf["d_model"],
        mlp_hidden=hf["encoder_ffn_dim"],
        norm_placement="post" if post else "pre",
        final_norm=not post,
    )

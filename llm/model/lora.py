"""LoRA (Hu et al. 2021): low-rank adapters on the GPT's linear layers, through ``peft``.

peft's LoRA wraps ``nn.Linear`` modules chosen by name, and our blocks are built of exactly
those (``attn.qkv``, ``attn.proj``, ``mlp.fc``, ``mlp.proj``), so it fits without a layer of our
own. ``inject_adapter_in_model`` swaps the chosen modules in place: the model stays a GPT, with
its config, blocks, forward and KV cache, so the trainer, DDP, generation and evaluation take an
adapted model as they take a plain one, and serving needs no merge. Only the adapter tensors
require grad. ``merged`` folds them into a plain GPT (for the Hugging Face export). The settings
(``LoraSettings``) live with fine-tuning's, torch-free, so the job spec can show them.

peft imports transformers, which takes seconds, so it is imported only where an adapter is
made; everything else recognises an adapted model by the ``peft_config`` peft sets on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm.finetune.config import LoraSettings
from llm.model.gpt import GPT

ADAPTER_NAME = "default"  # peft's name for a model's only adapter


def target_names(model: nn.Module) -> list[str]:
    """What target_modules may name: the last name of each nn.Linear inside the blocks. The LM
    head is left out: it shares its weight with the token embedding, which a merge would then
    change too."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"LoRA adapts an llmforge GPT, got {type(model).__name__}")
    names = set()
    for name, module in blocks.named_modules():
        parts = name.split(".")
        if any(part.startswith("lora_") or part == "base_layer" for part in parts):
            continue  # inside an adapted layer: the adapter's own linears, not the model's
        if isinstance(module, nn.Linear) or hasattr(module, "base_layer"):
            names.add(parts[-1])
    return sorted(names)


def check_targets(model: nn.Module, targets: tuple[str, ...] | list[str]) -> None:
    """Refuse target names that match no linear layer (peft would only say none matched)."""
    known = target_names(model)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ValueError(
            f"lora.target_modules: {unknown} name no linear layer of the model's blocks; "
            f"choose among {known}"
        )


def is_adapted(model: nn.Module) -> bool:
    """Whether model carries LoRA adapters (peft leaves its config on the model it adapts)."""
    return bool(getattr(model, "peft_config", None))


def add_lora(
    model: GPT, settings: LoraSettings, *, base: str | None = None, base_fingerprint: str = ""
) -> GPT:
    """Adapt model in place with fresh adapters (B = 0: the output is the base model's until
    trained) and freeze everything but them; returns model. base names the checkpoint model was
    loaded from and base_fingerprint its weights (``llm.train.checkpoint.adapter``), so a saved
    adapter knows its base; peft keeps them as the base's name and revision."""
    from peft import LoraConfig, inject_adapter_in_model

    check_targets(model, settings.target_modules)
    if is_adapted(model):
        raise ValueError("the model already carries a LoRA adapter; merge it first")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # a float scales as well
        lora_dropout=settings.dropout,
        # peft matches a name to a module whose path ends with it: "proj" adapts attn.proj and
        # mlp.proj, never lm_head
        target_modules=list(settings.target_modules),
        bias="none",
        base_model_name_or_path=base,
        revision=base_fingerprint or None,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_settings(model: nn.Module) -> LoraSettings:
    """The settings model's adapter was made with."""
    if not is_adapted(model):
        raise ValueError("the model carries no LoRA adapter")
    config: Any = model.peft_config[ADAPTER_NAME]  # type: ignore[index]
    return LoraSettings(
        r=int(config.r),
        alpha=float(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=tuple(sorted(config.target_modules)),
    )


def adapter_base(model: nn.Module) -> tuple[str | None, str]:
    """(checkpoint, fingerprint) of the base model's adapter was made on, as add_lora got them."""
    config: Any = model.peft_config[ADAPTER_NAME]  # type: ignore[index]
    return config.base_model_name_or_path, config.revision or ""


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors alone, by their names in the adapted model."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load an adapter's tensors into model, which must carry an adapter of the same shape."""
    expected = set(adapter_state(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the adapter does not fit the model: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]} (of {len(missing)} and {len(unexpected)})"
        )
    model.load_state_dict(tensors, strict=False)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merged(model: GPT) -> GPT:
    """A plain GPT computing what the adapted model computes: each adapted weight W becomes
    W + (alpha / r) B @ A. model itself is left as it is."""
    if not is_adapted(model):
        return model
    from peft.tuners.lora import Linear as LoraLinear

    # the adapted modules hold their weight as <name>.base_layer.weight
    state = {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_" not in k
    }
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):  # add_lora adapts nn.Linear layers only
            state[f"{name}.weight"] = state[f"{name}.weight"] + module.get_delta_weight(
                ADAPTER_NAME
            )
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: spend no RNG
        plain = GPT(model.config).to(device)
    plain.load_state_dict(state)
    return plain.train(model.training)

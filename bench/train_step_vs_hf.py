"""Training step throughput (forward + backward + AdamW, fp32, CPU) against transformers.

GPT-2-style and Llama-style configs of 6 layers, 6 heads, width 384, batch 8 x 256 tokens; each
model is built at exactly the same size as its transformers twin. Models run alternately in one
process; the speedup is the median over rounds of each round's step-time ratio, because 2-core
timings swing with other processes.
Run from the repository root: .venv/bin/python -m bench.train_step_vs_hf [--rounds N] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llm.model.compile import compile_model
from llm.model.config import ModelConfig
from llm.model.gpt import GPT

VOCAB, BLOCK, BATCH = 50304, 256, 8
SIZE = dict(vocab_size=VOCAB, block_size=BLOCK, n_layer=6, n_head=6, n_embd=384)
LLAMA = dict(norm="rmsnorm", activation="swiglu", position="rope", mlp_hidden=1024)


def hf_gpt2() -> torch.nn.Module:
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=BLOCK,
        n_embd=384,
        n_layer=6,
        n_head=6,
        activation_function="gelu",
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(cfg)


def hf_llama() -> torch.nn.Module:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=BLOCK,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def step_fn(model: torch.nn.Module, hf: bool):  # type: ignore[no-untyped-def]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (BATCH, BLOCK))
    y = torch.randint(0, VOCAB, (BATCH, BLOCK))

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss if hf else model(x, y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="torch.compile our models")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    models = {
        "ours_gpt2": (GPT(ModelConfig(**SIZE, bias=True)), False),
        "hf_gpt2": (hf_gpt2(), True),
        "ours_llama": (GPT(ModelConfig(**SIZE, **LLAMA)), False),
        "hf_llama": (hf_llama(), True),
    }
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()}
    assert n_params["ours_gpt2"] == n_params["hf_gpt2"], n_params
    assert n_params["ours_llama"] == n_params["hf_llama"], n_params
    if args.compile:
        for name in ("ours_gpt2", "ours_llama"):
            models[name] = (compile_model(models[name][0]), False)
    steps = {k: step_fn(m.train(), hf) for k, (m, hf) in models.items()}
    for step in steps.values():
        step()  # warm-up: allocator and optimizer state
    times: dict[str, list[float]] = {k: [] for k in steps}
    for round_ in range(args.rounds):
        # swap the order each round so neither side always runs right after the other
        order = list(steps) if round_ % 2 == 0 else list(reversed(steps))
        for name in order:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    for name, secs in times.items():
        tps = BATCH * BLOCK / statistics.median(secs)
        print(f"{name:11s} {n_params[name]:>11,d} params  median {tps:8.0f} tokens/s")
    # each round's pair ran seconds apart, so its ratio is robust to load that drifts over minutes
    result = {
        f"speedup_vs_hf_{family}": round(
            statistics.median(
                hf / ours
                for ours, hf in zip(times[f"ours_{family}"], times[f"hf_{family}"], strict=True)
            ),
            3,
        )
        for family in ("gpt2", "llama")
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

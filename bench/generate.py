"""Generation throughput: our KV cache against no cache, and against transformers' generate
on the same weights exported to the Hugging Face format (greedy, batch of 1, fp32, CPU).

Run from the repository root: .venv/bin/python -m bench.generate [--new-tokens N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from llm.generate import generate
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.hf import export_hf

CONFIG = ModelConfig(
    vocab_size=50304,
    block_size=512,
    n_layer=6,
    n_head=6,
    n_embd=384,
    norm="rmsnorm",
    activation="swiglu",
    position="rope",
    mlp_hidden=1024,
)
PROMPT = list(range(100, 132))


def timed(fn: Callable[[], list[int]], rounds: int) -> tuple[float, list[int]]:
    seconds, out = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp).eval()

    def hf_generate() -> list[int]:
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        return out[0, len(PROMPT) :].tolist()

    runs = {
        "cache": lambda: generate(model, PROMPT, n, temperature=0),
        "no_cache": lambda: generate(model, PROMPT, n, temperature=0, use_cache=False),
        "hf": hf_generate,
    }
    generate(model, PROMPT, 4, temperature=0)  # warm-up
    hf_generate()
    results = {name: timed(fn, args.rounds) for name, fn in runs.items()}
    tps = {name: n / secs for name, (secs, _) in results.items()}
    for name, value in tps.items():
        print(f"{name:9s} {value:8.1f} tokens/s")
    same = results["cache"][1] == results["no_cache"][1] == results["hf"][1]
    print(f"greedy outputs identical across the three: {same}")
    print(
        json.dumps(
            {
                "kv_cache_speedup": round(tps["cache"] / tps["no_cache"], 3),
                "speedup_vs_hf_generate": round(tps["cache"] / tps["hf"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()

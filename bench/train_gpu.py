"""GPT-2 small (124M) training throughput and MFU on one GPU: plain vs FSDP2 (world of one).

bf16 autocast, torch.compile, SDPA attention (the model's own), on random tokens (throughput
does not depend on the text). MFU is the loop's own figure against the H200 dense bf16 peak,
989e12 FLOP/s; tokens/s is the median over log windows after the first (compilation).

Run from the repository root on a CUDA machine (under 8 minutes on an H100/H200):
    .venv/bin/python -m bench.train_gpu
The last line is {"mfu": ..., "tokens_per_s": ...} of the plain run; on a machine without CUDA
it prints why and exits with status 2.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llm.model import ModelConfig
from llm.tokenizer.shards import write_manifest, write_shard
from llm.train.loop import TrainConfig, train

H200_BF16_DENSE = 989e12
VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 128 for the tensor cores
STEPS, LOG_EVERY = 120, 20


def random_shards(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    (directory / "tokenizer.json").write_text("{}\n")  # only hashed by the manifest
    shards = {}
    for split, n in (("train", 16_000_000), ("val", 200_000)):
        entry = write_shard(directory, f"{split}-0000.bin", rng.integers(0, VOCAB, n, np.uint16))
        shards[split] = [{**entry, "documents": 1}]
    write_manifest(
        directory,
        tokenizer_file="tokenizer.json",
        vocab_size=VOCAB,
        dtype="uint16",
        eos_id=0,
        shards=shards,
    )
    return directory


def configs(parallelism: str) -> tuple[TrainConfig, ModelConfig]:
    model = ModelConfig(vocab_size=VOCAB, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    cfg = TrainConfig(
        steps=STEPS,
        batch_size=16,
        seq_len=1024,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=20,
        log_every=LOG_EVERY,
        eval_every=STEPS,
        eval_batches=2,
        checkpoint_every=STEPS,
        precision="bf16",
        compile=True,
        parallelism=parallelism,
        peak_flops=H200_BF16_DENSE,
    )
    return cfg, model


def measure(parallelism: str, data: Path, out: Path) -> dict[str, float]:
    cfg, model = configs(parallelism)
    logs: list[dict[str, float]] = []
    train(cfg, model, data, out, on_log=lambda step, m: logs.append(m))
    steady = logs[1:]  # the first window includes compilation
    result = {
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steady),
        "mfu": statistics.median(m["mfu"] for m in steady),
        "peak_memory_gb": logs[-1]["peak_memory_gb"],
        "final_loss": logs[-1]["loss"],
    }
    print(f"{parallelism}: {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    if not torch.cuda.is_available():
        print(
            "bench/train_gpu.py needs a CUDA GPU; none is visible here (torch "
            f"{torch.__version__}, cuda {torch.version.cuda}). Nothing was measured."
        )
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = random_shards(Path(tmp) / "shards")
        plain = measure("ddp", data, Path(tmp) / "plain")  # world of one: no wrapper at all
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
        dist.init_process_group("nccl", rank=0, world_size=1)
        try:
            fsdp = measure("fsdp", data, Path(tmp) / "fsdp")
        finally:
            dist.destroy_process_group()
    print(json.dumps({"fsdp_mfu": fsdp["mfu"], "fsdp_tokens_per_s": fsdp["tokens_per_s"]}))
    print(json.dumps({"mfu": plain["mfu"], "tokens_per_s": plain["tokens_per_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

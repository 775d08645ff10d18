"""GPT-2 small (124M) training throughput and MFU on one GPU: plain vs FSDP2 (world of one).

bf16 autocast, torch.compile, SDPA attention (the model's own), fused AdamW, micro-batch 64 x
1024 tokens, on random tokens (throughput does not depend on the text). MFU is the loop's own
figure against the H200 dense bf16 peak, 989e12 FLOP/s; tokens/s is the median over log windows
after the first (compilation). When time allows, a third run at half the micro-batch shows what
the batch size costs.

Run from the repository root on a CUDA machine (about 2.5 minutes on an H200):
    .venv/bin/python -m bench.train_gpu
Results also go to $OUT/train_gpu.json when OUT is set. The last line is {"mfu": ...,
"tokens_per_s": ...} of the plain run; on a machine without CUDA it prints why and exits with
status 2 (BENCH_DRY_RUN=1 runs the same path on a CPU for a few steps, as a smoke test).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llm.model.config import ModelConfig
from llm.tokenizer.shards import write_manifest, write_shard
from llm.train.pretrain import TrainConfig, train

H200_BF16_DENSE = 989e12
VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 128 for the tensor cores
# BENCH_DRY_RUN=1 runs the same code path on a CPU with a tiny step count (a smoke test only)
DRY = bool(os.environ.get("BENCH_DRY_RUN"))
STEPS, LOG_EVERY = (6, 2) if DRY else (120, 20)
BATCH = 2 if DRY else int(os.environ.get("BENCH_MICRO_BATCH", "64"))
PRECISION = "fp32" if DRY else "bf16"
COMPILE = not DRY
EXTRA_IF_UNDER_S = 300.0


def random_shards(directory: Path) -> Path:
    directory.mkdir(parents=True)
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


def configs(parallelism: str, batch_size: int) -> tuple[TrainConfig, ModelConfig]:
    model = ModelConfig(vocab_size=VOCAB, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    cfg = TrainConfig(
        steps=STEPS,
        batch_size=batch_size,
        seq_len=1024,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=20,
        log_every=LOG_EVERY,
        eval_every=STEPS,
        eval_batches=2,
        checkpoint_every=STEPS,
        precision=PRECISION,
        compile=COMPILE,
        parallelism=parallelism,
        peak_flops=H200_BF16_DENSE,
        tensorboard=False,
    )
    return cfg, model


def measure(parallelism: str, batch_size: int, data: Path, out: Path) -> dict[str, float]:
    cfg, model = configs(parallelism, batch_size)
    logs: list[dict[str, float]] = []
    began = time.perf_counter()
    train(cfg, model, data, out, on_log=lambda step, m: logs.append(m))
    steady = logs[1:]  # the first window includes compilation
    result = {
        "batch_size": batch_size,
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steady),
        "mfu": statistics.median(m.get("mfu", 0.0) for m in steady),
        "peak_memory_gb": logs[-1]["peak_memory_gb"],
        "first_loss": logs[0]["loss"],
        "final_loss": logs[-1]["loss"],
        "wall_s": time.perf_counter() - began,
    }
    print(f"{parallelism} (micro-batch {batch_size}): {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    if not torch.cuda.is_available() and not os.environ.get("BENCH_DRY_RUN"):
        print(
            "bench/train_gpu.py needs a CUDA GPU; none is visible here (torch "
            f"{torch.__version__}, cuda {torch.version.cuda}). Nothing was measured."
        )
        return 2
    cuda = torch.cuda.is_available()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if cuda else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    began = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = random_shards(Path(tmp) / "shards")
        results["plain"] = measure("ddp", BATCH, data, Path(tmp) / "plain")  # world of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
        try:
            results["fsdp"] = measure("fsdp", BATCH, data, Path(tmp) / "fsdp")
        except Exception as e:  # the headline figure still prints
            print(f"fsdp run failed: {type(e).__name__}: {e}", flush=True)
        finally:
            dist.destroy_process_group()
        if time.perf_counter() - began < EXTRA_IF_UNDER_S:  # half the micro-batch, to compare
            results["plain_small_batch"] = measure("ddp", BATCH // 2, data, Path(tmp) / "half")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "train_gpu.json").write_text(json.dumps(results, indent=2))
    fsdp = results.get("fsdp", {})
    print(json.dumps({"fsdp_mfu": fsdp.get("mfu"), "fsdp_tokens_per_s": fsdp.get("tokens_per_s")}))
    plain = results["plain"]
    print(json.dumps({"mfu": plain["mfu"], "tokens_per_s": plain["tokens_per_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

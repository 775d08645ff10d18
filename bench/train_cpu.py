"""Training throughput under Ray Train (2 CPU workers, DDP over gloo) vs a plain single process.

Both runs use llm.train.loop.train on the same model, data and per-worker batch; throughput is
the loop's own steady-state tokens_per_s (the median over log windows after the first, so
process, Ray and worker-group start-up are excluded). The plain process runs on one thread,
the CPU each Ray worker is given, so the ratio is per-worker efficiency:

    ray_vs_plain_per_worker = (Ray tokens/s / 2) / plain tokens/s

Run from the repository root (about a minute on 2 cores; the last line is JSON):
    .venv/bin/python -m bench.train_cpu
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llm.model import ModelConfig
from llm.train.data import TokenShards
from llm.train.loop import TrainConfig, train
from tests.llm.conftest import build_shard_folder, shakespeare_docs

# read when ray is imported (lazily, below): one private local instance, quick health checks
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

WORKERS = 2
STEPS, LOG_EVERY = 120, 10


def configs(vocab_size: int) -> tuple[TrainConfig, ModelConfig]:
    model = ModelConfig(vocab_size=vocab_size, n_layer=4, n_embd=128, n_head=4, block_size=128)
    cfg = TrainConfig(
        steps=STEPS,
        batch_size=8,
        seq_len=128,
        warmup_steps=10,
        log_every=LOG_EVERY,
        eval_every=STEPS,
        eval_batches=2,
        checkpoint_every=STEPS,
    )
    return cfg, model


def steady_tokens_per_s(logs: list[float]) -> float:
    return statistics.median(logs[1:])  # the first window holds the warm-up steps


def plain_run(data: Path, out: Path) -> float:
    torch.set_num_threads(1)
    cfg, model = configs(TokenShards(data, "train", verify=False).vocab_size)
    logs: list[float] = []
    train(cfg, model, data, out, on_log=lambda step, m: logs.append(m["tokens_per_s"]))
    return steady_tokens_per_s(logs)


def ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg, model = configs(config["vocab_size"])
    logs: list[float] = []
    train(
        cfg,
        model,
        config["data"],
        config["out"],
        on_log=lambda step, m: logs.append(m["tokens_per_s"]),
    )
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["result"]).write_text(json.dumps(logs))


def ray_run(data: Path, out: Path) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(
        address="local", num_cpus=WORKERS, object_store_memory=100_000_000, include_dashboard=False
    )
    try:
        result = out / "logs.json"
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={
                "data": str(data),
                "out": str(out),
                "result": str(result),
                "vocab_size": TokenShards(data, "train", verify=False).vocab_size,
            },
            scaling_config=ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="bench-train-cpu", storage_path=str(out / "ray")),
        )
        trainer.fit()
        return steady_tokens_per_s(json.loads(result.read_text()))
    finally:
        ray.shutdown()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = build_shard_folder(root / "shards", shakespeare_docs())
        start = time.perf_counter()
        plain = plain_run(data, root / "plain")
        print(
            f"plain, 1 process x 1 thread: {plain:,.0f} tokens/s "
            f"({time.perf_counter() - start:.1f} s wall)"
        )
        start = time.perf_counter()
        ray_tps = ray_run(data, root / "ray")
        print(
            f"Ray Train, {WORKERS} workers x 1 CPU (DDP/gloo): {ray_tps:,.0f} tokens/s "
            f"({time.perf_counter() - start:.1f} s wall incl. start-up)"
        )
    print(
        json.dumps(
            {
                "ray_vs_plain_per_worker": round(ray_tps / WORKERS / plain, 3),
                "ray_tokens_per_s": round(ray_tps),
                "plain_tokens_per_s": round(plain),
            }
        )
    )


if __name__ == "__main__":
    main()

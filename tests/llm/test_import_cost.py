"""What a job's driver and an evaluation import: FSDP, DTensor and distributed checkpointing
(and with them sympy, about 2.4 s of every process here) load only where a run uses them, not
in every process that imports the training stack or reads a checkpoint.

(A training process imports them anyway: torch's optimizers import torch._dynamo, and with it
all of these, when the first one is made.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llm.model.config import ModelConfig
from llm.train.pretrain import TrainConfig, train
from tests.llm.conftest import build_shard_folder, shakespeare_docs

FSDP_ONLY = ("sympy", "torch.distributed.tensor", "torch.distributed.checkpoint")

READ = """
import sys

import torch

import ray_jobs.evaluate
import ray_jobs.finetune
import ray_jobs.train
import ray_jobs.tune
from llm.train.checkpoint import latest_checkpoint, load_model

model = load_model(latest_checkpoint(sys.argv[1]))
with torch.no_grad():
    model(torch.zeros(1, 8, dtype=torch.long))
print(sorted(m for m in sys.argv[2:] if m in sys.modules))
"""


def test_drivers_and_a_checkpoint_read_load_no_fsdp_machinery(tmp_path: Path) -> None:
    shards = build_shard_folder(tmp_path / "shards", shakespeare_docs(20_000), vocab_size=300)
    model = ModelConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=16)
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=16, checkpoint_every=2, warmup_steps=0)
    train(cfg, model, shards, tmp_path / "out")
    out = subprocess.run(
        [sys.executable, "-c", READ, str(tmp_path / "out" / "checkpoints"), *FSDP_ONLY],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr

"""LoRA against full fine-tuning on the Alpaca records in ../shared/data/instruct.

A small GPT is pretrained here first (a 2k BPE and token shards from the bench corpus of
Gutenberg, web and speech text plus the Alpaca records the fine-tunes do not use), then
fine-tuned twice from that checkpoint on the same records with the same steps, batches and
seed: every weight, and LoRA (r 8, alpha 16 on qkv, proj, fc) at a higher learning rate, as
LoRA recipes use. For each: the trainable fraction, the held-out response loss before and
after, the checkpoint's weight file, and optimizer steps/s, timed apart from those runs in
alternating rounds of the trainer's own step (best round of each), so that a change in the
machine's load hits both alike; then the merged adapter's largest logit difference from the
adapter's.

Run from the repository root: .venv/bin/python -m bench.lora_vs_full [--steps 200]
Last line: {"full": {…}, "lora": {…}, "lora_vs_full_steps_per_s": …, "merged_max_abs_diff": …}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._common import DATA, load_corpus
from llm.finetune.batches import in_order
from llm.finetune.config import LoraSettings, finetune_config
from llm.finetune.data import DataOptions, SFTData, prepare
from llm.finetune.sft import fine_tuning, finetune
from llm.model.config import ModelConfig
from llm.model.lora import merged
from llm.tokenizer.bpe import EOS_TOKEN, eos_id, save_tokenizer, train_bpe
from llm.tokenizer.shards import encode_documents, token_dtype, write_manifest, write_shard
from llm.train.checkpoint import latest_checkpoint, load_model
from llm.train.pretrain import TrainConfig, train
from llm.train.trainer import Trainer

ALPACA = DATA / "instruct" / "alpaca_5000.json"
SFT_RECORDS = 2000  # the first ones; pretraining sees only the others
MODEL = ModelConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=128)
LORA = LoraSettings(r=8, alpha=16.0, target_modules=("qkv", "proj", "fc"))
LOG_EVERY = 10
TIMED_STEPS = 10


def pretrain_base(work: Path, steps: int) -> tuple[Path, Any]:
    """The checkpoint of a GPT pretrained for steps on the bench corpus, and its tokenizer."""
    records = json.loads(ALPACA.read_text())[SFT_RECORDS:]
    texts = [text for _, text in load_corpus(1500)]
    texts += [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in records]
    tok = train_bpe(texts, vocab_size=MODEL.vocab, special_tokens=(EOS_TOKEN,))
    shards = work / "shards"
    shards.mkdir()
    save_tokenizer(tok, shards / "tokenizer.json")
    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    cut = len(texts) * 19 // 20
    split = {"train": texts[:cut], "val": texts[cut:]}
    entries = {}
    for name, docs in split.items():
        entry = write_shard(shards, f"{name}-0000.bin", encode_documents(tok, docs, eos, dtype))
        entries[name] = [{**entry, "documents": len(docs)}]
    write_manifest(
        shards,
        tokenizer_file="tokenizer.json",
        vocab_size=tok.get_vocab_size(),
        dtype=dtype,
        eos_id=eos,
        shards=entries,
    )
    cfg = TrainConfig(
        steps=steps, batch_size=16, seq_len=128, lr=3e-3, min_lr=3e-4, warmup_steps=20,
        eval_every=steps, eval_batches=4, checkpoint_every=steps, log_every=50,
    )  # fmt: skip
    train(cfg, MODEL, shards, work / "pretrain")
    checkpoint = latest_checkpoint(work / "pretrain" / "checkpoints")
    assert checkpoint is not None
    return checkpoint, tok


class Timeline:
    """Each logged step's metrics."""

    def __init__(self) -> None:
        self.logs: dict[int, dict[str, float]] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.logs[step] = dict(metrics)


def tune(
    base: Path, data: SFTData, out: Path, steps: int, lr: float, lora: LoraSettings | None
) -> dict[str, Any]:
    cfg = finetune_config(
        steps=steps, batch_size=8, lr=lr, min_lr=lr / 10, warmup_steps=10,
        log_every=LOG_EVERY, eval_every=steps, checkpoint_every=steps, seed=0,
    )  # fmt: skip
    timeline = Timeline()
    summary = finetune(cfg, base, data.train, data.val, out, pad_id=0, lora=lora, on_log=timeline)
    folder = Path(summary["checkpoint"])
    weights = folder / ("adapter_model.safetensors" if lora else "model.safetensors")
    return {
        "lr": lr,
        "parameters": summary["parameters"],
        "trainable_parameters": summary["trainable_parameters"],
        "trainable_fraction": summary["trainable_parameters"] / summary["parameters"],
        "steps": summary["steps"],
        "val_loss_before": timeline.logs[0]["val_loss"],
        "val_loss_after": timeline.logs[steps]["val_loss"],
        "weights_mb": weights.stat().st_size / 1e6,
        "checkpoint": str(folder),
    }


def step_rates(base: Path, data: SFTData, work: Path, rounds: int = 3) -> dict[str, float]:
    """Optimizer steps/s of each method: the best of rounds alternating between the two."""
    cfg = finetune_config(steps=10**6, batch_size=8, lr=1e-4, seed=0)
    trainers = {}
    for name, lora in (("full", None), ("lora", LORA)):
        task = fine_tuning(cfg, base, data.train, data.val, pad_id=0, dropout=None, lora=lora)
        trainers[name] = Trainer(cfg, task, work / f"timing-{name}")
        trainers[name].train_step()  # the first step allocates the optimizer state
    rates = dict.fromkeys(trainers, 0.0)
    for _ in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(TIMED_STEPS):
                trainer.train_step()
            rates[name] = max(rates[name], TIMED_STEPS / (time.perf_counter() - start))
    return rates


@torch.no_grad()
def merged_difference(adapter: str, data: SFTData) -> float:
    """The largest |logit| difference between the adapter on its base and the merged model,
    over a batch of held-out examples."""
    model = load_model(adapter)
    plain = merged(model)
    batch = next(in_order(data.val, 8, 0))
    return float((model(batch.input_ids)[0] - plain(batch.input_ids)[0]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps, each method")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=4e-3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        base, tok = pretrain_base(work, args.pretrain_steps)
        pretrain_s = time.perf_counter() - t0
        options = DataOptions(max_samples=SFT_RECORDS, val_fraction=0.1, seed=0)
        data = prepare(ALPACA, tok, eos_id(tok), block_size=MODEL.block_size, options=options)
        print(f"pretrained in {pretrain_s:.0f} s; {len(data.train)} train, {len(data.val)} val")
        full = tune(base, data, work / "full", args.steps, args.full_lr, None)
        print("full:", json.dumps(full))
        lora = tune(base, data, work / "lora", args.steps, args.lora_lr, LORA)
        print("lora:", json.dumps(lora))
        difference = merged_difference(lora["checkpoint"], data)
        rates = step_rates(base, data, work)
    for name, result in (("full", full), ("lora", lora)):
        del result["checkpoint"]
        result["steps_per_s"] = rates[name]
        assert result["val_loss_after"] < result["val_loss_before"], result
    print(
        json.dumps(
            {
                "full": full,
                "lora": {**lora, **LORA.to_dict()},
                "lora_vs_full_steps_per_s": lora["steps_per_s"] / full["steps_per_s"],
                "merged_max_abs_diff": difference,
                "sft_examples": {"train": len(data.train), "val": len(data.val)},
                "pretrain_steps": args.pretrain_steps,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Serving under load: continuous batching against one-at-a-time, and against transformers.

The model is the demo's size (4 layers, n_embd 128, context 128, a 2,048-token BPE) trained in
this run for ``--train-steps`` steps on real text from ``../shared/data`` (seconds: throughput,
not quality, is measured, but its text is text-like, so prompts and stop behaviour are real).
The control plane runs under uvicorn in a separate process on loopback with the model
registered; then the same ``--requests`` streaming requests (greedy, ``--max-tokens`` each, EOS
ignored so every request makes the same number of tokens) are sent

1. by ``--clients`` concurrent clients (continuous batching), measuring time to first token;
2. one at a time by one client (no batching: the engine runs a batch of one);

and the first ``--hf-requests`` of them go through Hugging Face ``generate`` (greedy, one at a
time, same threads) on the model exported to the Hugging Face format. Greedy outputs are
checked equal across the three. The engine alone (in this process, no HTTP) is timed on the
same prompts too, so the cost of the HTTP layer shows. Last line:
``{"batched_vs_sequential_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "tokens_per_s"}``.

Run from the repository root: .venv/bin/python -m bench.serve_load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from bench._common import load_corpus
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.hf import export_hf
from llm.serve.engine import Engine
from llm.serve.params import SamplingParams
from llm.tokenizer.bpe import eos_id, load_tokenizer, save_tokenizer, train_bpe
from llm.train.checkpoint import save_checkpoint
from services.ray_head import free_port

CONFIG = dict(block_size=128, n_layer=4, n_head=4, n_embd=128)


def train_model(docs: list[str], steps: int, out: Path) -> tuple[GPT, Path, list[str]]:
    """BPE on the corpus, then a few hundred AdamW steps; saved as a checkpoint in out."""
    tok = train_bpe(docs, vocab_size=2048)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, out / "tokenizer.json")
    eos = eos_id(tok)
    ids = np.concatenate([np.array([*e.ids, eos]) for e in tok.encode_batch(docs)])
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.get_vocab_size(), **CONFIG)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    data = torch.from_numpy(ids.astype(np.int64))
    block, rng = config.block_size, np.random.default_rng(0)
    t0 = time.perf_counter()
    for step in range(steps):
        starts = rng.integers(0, len(data) - block - 1, size=8)
        x = torch.stack([data[s : s + block] for s in starts])
        y = torch.stack([data[s + 1 : s + block + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.1f}s", flush=True)
    ckpt = save_checkpoint(
        out / "ckpt", model=model, config=config, optimizer=None, trainer_state={"step": steps}
    )
    save_tokenizer(tok, ckpt / "tokenizer.json")
    # prompts: the first 8 to 32 tokens of documents, the ones the model saw least
    prompts = []
    for doc in docs[::-1]:
        ids = tok.encode(doc).ids
        if len(ids) >= 32:
            prompts.append(tok.decode(ids[: random.Random(len(prompts)).randint(8, 32)]))
    return model.eval(), ckpt, prompts


def start_server(home: Path, port: int, max_batch: int, models: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LLMFORGE_AUTH": "false",
        "LLMFORGE_HOME": str(home),
        # the trained model's folder: a registered URI must lie under the team's read roots
        "LLMFORGE_SHARED_ROOTS": str(models),
        "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "LLMFORGE_POLL_INTERVAL_S": "3600",
        "LLMFORGE_SERVE_MAX_BATCH": str(max_batch),
        "LLMFORGE_SERVE_MAX_QUEUE": "1024",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "services.api.app:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("control plane did not start")


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, str, int]:
    """(seconds to the first token, text, completion tokens) of one streamed request."""
    t0 = time.perf_counter()
    first, text, tokens = None, [], 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread()).decode()}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                first = first or time.perf_counter()
                text.append(choice["text"])
    assert first is not None
    return first - t0, "".join(text), tokens


async def drive(
    base: str, url: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[float, list[float], list[str], int]:
    """All bodies through ``clients`` concurrent streams: (seconds, ttfts, texts, tokens)."""
    todo = list(enumerate(bodies))
    texts: list[str] = [""] * len(bodies)
    ttfts: list[float] = []
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        async with client:
            while todo:
                i, body = todo.pop(0)
                ttft, texts[i], made = await one(client, url, body)
                ttfts.append(ttft)
                tokens += made

    # the clients are made before the clock starts: making one loads a CA bundle (50-100 ms
    # here, holding the event loop), which would count in the time to first token of every
    # request already started: 15 times over for the first of 16
    made = [httpx.AsyncClient(base_url=base, timeout=600) for _ in range(clients)]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in made))
    return time.perf_counter() - t0, ttfts, texts, tokens


def hf_generate(model: GPT, ckpt: Path, prompts: list[list[int]], new: int) -> tuple[float, list]:
    tokenizer = ckpt / "tokenizer.json"
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp, tokenizer, eos_id=eos_id(load_tokenizer(tokenizer)))
        hf = AutoModelForCausalLM.from_pretrained(tmp).eval()
    # EOS ignored, as the served requests do (min_new_tokens would instead forbid it)
    hf.generation_config.eos_token_id = None

    def run(prompt: list[int]) -> list[int]:
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False
        )
        return out[0, len(prompt) :].tolist()

    with torch.no_grad():
        run(prompts[0])  # warm-up
        t0 = time.perf_counter()
        outs = [run(p) for p in prompts]
    return time.perf_counter() - t0, outs


def engine_only(model: GPT, prompts: list[list[int]], new: int, clients: int) -> float:
    """The engine without HTTP, in this process: batched tokens/s over one-at-a-time's."""
    engine = Engine(model, lambda ids: "", eos_id=None, max_batch=clients, max_queue=len(prompts))
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    try:
        engine.generate(prompts[:1], params)  # warm-up
        t0 = time.perf_counter()
        for p in prompts:
            engine.generate([p], params)
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        for handle in [engine.submit([p], params) for p in prompts]:
            handle.result()
        return sequential / (time.perf_counter() - t0)
    finally:
        engine.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--hf-requests", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    docs = [text for _, text in load_corpus(600)]
    with tempfile.TemporaryDirectory(prefix="llmforge-serve-bench-") as tmp:
        model, ckpt, prompts = train_model(docs, args.train_steps, Path(tmp) / "model")
        port = free_port()
        server = start_server(
            Path(tmp) / "home", port, max_batch=max(args.clients, 16), models=Path(tmp) / "model"
        )
        try:
            base = f"http://127.0.0.1:{port}"
            body = {"name": "bench", "kind": "checkpoint", "uri": str(ckpt)}
            registered = httpx.post(f"{base}/api/v1/models", json=body).raise_for_status()
            model_id = registered.json()["id"]
            url = f"/api/v1/models/{model_id}/completions"
            bodies = [
                {"prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens,
                 "temperature": 0, "ignore_eos": True, "stream": True,
                 "stream_options": {"include_usage": True}}
                for i in range(args.requests)
            ]  # fmt: skip
            asyncio.run(drive(base, url, bodies[:2], 2))  # load the model, warm up
            batched_s, ttfts, batched_texts, batched_tokens = asyncio.run(
                drive(base, url, bodies, args.clients)
            )
            seq_s, _, seq_texts, seq_tokens = asyncio.run(drive(base, url, bodies, 1))
        finally:
            server.terminate()
            server.wait(timeout=30)
        tok = load_tokenizer(ckpt / "tokenizer.json")
        all_ids = [tok.encode(b["prompt"]).ids for b in bodies]
        engine_ratio = engine_only(model, all_ids, args.max_tokens, args.clients)
        hf_prompts = all_ids[: args.hf_requests]
        hf_s, hf_out = hf_generate(model, ckpt, hf_prompts, args.max_tokens)
    hf_texts = [tok.decode(o) for o in hf_out]
    same = batched_texts == seq_texts and hf_texts == batched_texts[: len(hf_texts)]
    batched_tps, seq_tps = batched_tokens / batched_s, seq_tokens / seq_s
    hf_tps = len(hf_out) * args.max_tokens / hf_s
    detail = {
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "batched_s": round(batched_s, 2),
        "sequential_s": round(seq_s, 2),
        "sequential_tokens_per_s": round(seq_tps, 1),
        "hf_generate_tokens_per_s": round(hf_tps, 1),
        "batched_vs_hf_generate": round(batched_tps / hf_tps, 2),
        "engine_only_batched_vs_sequential": round(engine_ratio, 2),
        "greedy_outputs_identical": same,
    }
    print(json.dumps(detail))
    print(
        json.dumps(
            {
                "batched_vs_sequential_tokens_per_s": round(batched_tps / seq_tps, 2),
                "ttft_p50_ms": round(percentile(ttfts, 50) * 1000, 1),
                "ttft_p99_ms": round(percentile(ttfts, 99) * 1000, 1),
                "tokens_per_s": round(batched_tps, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

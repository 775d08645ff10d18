"""Does curation pay? The two-arm ablation (raw with exact dedup only, against full curation) at
one seed, through the control plane on embedded defaults, as a user would run it.

    .venv/bin/python -m bench.ablation [--steps 800] [--seed 0]

The raw corpus is real web text from ../shared/data: the dolma Common Crawl sample (697 pages)
and the trafilatura evaluation pages as whole-page text (922 pages, navigation and all, many
languages). Full curation: length, language (en), Gopher quality and repetition, exact and
MinHash dedup. One tokenizer (trained on the raw arm), the same model and the same steps (so
the same tokens) for both arms; then both models are scored on held-out clean text no arm trained
on (WikiText-2's test articles: bits per byte) and BLiMP. The compare stage's table is printed;
the last line is
``{"bpb_raw", "bpb_curated", "bpb_gain", "bpb_gain_stderr", "blimp_raw", "blimp_curated"}``
(``bpb_gain`` = raw minus curated: positive when curation helps; its standard error combines both
arms' per-article errors, as one seed gives no spread across seeds).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import DATA
from services.server import BackgroundServer
from services.settings import Settings

SOURCES = {
    "dolma": DATA / "web" / "cc_dolma_sample",
    "trafilatura": DATA / "web" / "trafilatura_pages" / "pages_text.jsonl.gz",
}
STEPS = [
    {"kind": "length"},
    {"kind": "language", "languages": ["en"]},
    {"kind": "gopher_quality"},
    {"kind": "gopher_repetition"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}


def write_corpus(folder: Path) -> int:
    """The raw web documents as gzipped JSONL (id, text), one file per source."""
    folder.mkdir(parents=True)
    n = 0
    for name, source in SOURCES.items():
        files = sorted(source.glob("*.jsonl.gz")) if source.is_dir() else [source]
        with gzip.open(folder / f"{name}.jsonl.gz", "wt", encoding="utf-8") as out:
            for path in files:
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    for line in f:
                        doc = json.loads(line)
                        out.write(json.dumps({"id": f"{name}-{doc['id']}", "text": doc["text"]}))
                        out.write("\n")
                        n += 1
    return n


def ablation_spec(corpus: Path, output: Path, steps: int, seed: int) -> dict[str, Any]:
    return {
        "name": "bench-ablation",
        "corpus": str(corpus),
        "output": str(output),
        "curate": {"parts_per_file": 2},
        "steps": STEPS,
        "seeds": [seed],
        "vocab_size": 4096,
        "train": {
            "steps": steps,
            "workers": 2,
            "batch_size": 16,
            "lr": 3e-3,
            "warmup_steps": steps // 20,
            "log_every": 25,
            "eval_every": max(25, steps // 10),
            "eval_batches": 8,
            "checkpoint_every": steps,
            "model": MODEL,
        },
        "tasks": ["wikitext2", "blimp"],
        "evaluate": {"limit": 20, "workers": 2},
    }


def _wait(client: httpx.Client, pipeline_id: str, timeout_s: float) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/v1/pipelines/{pipeline_id}").json()
        line = " ".join(f"{j['stage']}:{j['state']}" for j in body["jobs"])
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        if body["state"] in ("SUCCEEDED", "FAILED"):
            return body
        time.sleep(5)
    raise TimeoutError(f"pipeline {pipeline_id} did not end in {timeout_s:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps per arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmforge-bench-ablation-"))
    docs = write_corpus(work / "corpus")
    print(f"raw corpus: {docs} web documents in {work / 'corpus'}", flush=True)
    settings = Settings(
        home=Path(tempfile.mkdtemp(prefix="llmforge-bench-home-")),  # not under a storage root
        shared_roots=str(DATA),
        shared_write_roots=str(work),
        poll_interval_s=1.0,
        auth=False,
    )
    server = BackgroundServer(settings)
    server.start()
    started = time.monotonic()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            spec = ablation_spec(work / "corpus", work / "ablation", args.steps, args.seed)
            r = client.post("/api/v1/experiments/ablation", json=spec)
            r.raise_for_status()
            final = _wait(client, r.json()["id"], args.timeout)
    finally:
        server.stop()
    jobs = {j["stage"]: j for j in final["jobs"]}
    if final["state"] != "SUCCEEDED":
        failed = [(s, j["message"]) for s, j in jobs.items() if j["state"] == "FAILED"]
        raise SystemExit(f"ablation failed: {failed}")
    from llm.eval.compare import markdown

    result = jobs["compare"]["result"]
    for arm in ("raw", "full"):
        curated = jobs[f"curate_{arm}"]["result"]["stats"]
        tokens = jobs[f"tokenize_{arm}"]["result"]["stats"]["splits"]["train"]["tokens"]
        trained = jobs[f"train_{arm}_s{args.seed}"]["result"]
        print(
            f"{arm}: kept {curated['kept']['documents']} of {curated['documents']} documents, "
            f"{tokens} train tokens; trained {trained['steps']} steps on "
            f"{trained['tokens_seen']} tokens, final loss {trained['final_loss']:.3f}"
        )
    print(markdown(result))
    print(f"chart: {result['chart']}; wall {time.monotonic() - started:.0f}s", flush=True)
    arms = result["arms"]
    [bpb_key] = [k for k in result["metrics"] if k.startswith("wikitext2/")]
    [blimp_key] = [k for k in result["metrics"] if k.startswith("blimp/")]
    bpb = {a: arms[a]["metrics"][bpb_key] for a in ("raw", "full")}
    blimp = {a: arms[a]["metrics"][blimp_key]["mean"] for a in ("raw", "full")}
    gain = bpb["full"]["difference"]
    stderr = gain["stderr"]
    print(
        json.dumps(
            {
                "bpb_raw": round(bpb["raw"]["mean"], 4),
                "bpb_curated": round(bpb["full"]["mean"], 4),
                "bpb_gain": round(-gain["value"], 4),
                "bpb_gain_stderr": None if stderr is None else round(stderr, 4),
                "blimp_raw": round(blimp["raw"], 4),
                "blimp_curated": round(blimp["full"], 4),
            }
        )
    )
    assert stderr is None or math.isfinite(stderr)


if __name__ == "__main__":
    main()

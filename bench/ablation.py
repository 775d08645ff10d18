"""Does curation pay? The two-arm ablation (raw with exact dedup only, against full curation) at
one seed, through the control plane on embedded defaults, as a user would run it.

    .venv/bin/python -m bench.ablation [--steps 800] [--seeds 0]
    .venv/bin/python -m bench.ablation --grid --seeds 0 1 --steps 400   # the README's table

The raw corpus is real web text from ../shared/data: the dolma Common Crawl sample (697 pages)
and the trafilatura evaluation pages as whole-page text (922 pages, navigation and all, many
languages). Full curation: length, language (en), Gopher quality and repetition, exact and
MinHash dedup, and a DCLM-style fastText quality classifier trained here first (the better half
by its score; ``--no-quality`` leaves it out). One tokenizer (trained on the raw arm), the
same model and the same steps (so the same tokens) for both arms; then both models are scored
on held-out clean text no arm trained on (WikiText-2's test articles: bits per byte) and BLiMP.
The compare stage's table is printed; the last line is
``{"bpb_raw", "bpb_curated", "bpb_gain", "bpb_gain_stderr", "blimp_raw", "blimp_curated"}``
(``bpb_gain`` = raw minus curated: positive when curation helps; its standard error combines both
arms' per-article errors when one seed gives no spread across seeds). ``--grid`` adds the arms
without one step group each (no_heuristics, no_language, no_minhash, no_quality)."""

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
from services.ray_head import free_port
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
# DCLM's recipe at this corpus's scale: a fastText classifier of edited, instruction-like text
# (Alpaca's responses) against informal text (20 Newsgroups posts: headers, quoting, signatures),
# neither of them in the corpus; full curation keeps the better-scoring half of what is left.
QUALITY_POSITIVE = DATA / "instruct" / "alpaca_5000.json"
QUALITY_NEGATIVE = DATA / "email" / "20newsgroups" / "20news_bydate.jsonl.gz"
QUALITY_TOP_FRACTION = 0.5
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


def train_quality_model(folder: Path, n: int = 5000) -> Path:
    """The quality classifier full curation uses: ``n`` examples a side (Alpaca's 5,000
    responses; the first ``n`` newsgroup posts), trained with llmforge quality-train's defaults."""
    from llm.data.quality import read_examples, train_classifier

    folder.mkdir(parents=True)
    positive, negative = folder / "positive.jsonl", folder / "negative.jsonl"
    records = json.loads(QUALITY_POSITIVE.read_text())[:n]
    positive.write_text("".join(json.dumps({"text": r["output"]}) + "\n" for r in records))
    with gzip.open(QUALITY_NEGATIVE, "rt", encoding="utf-8") as f, negative.open("w") as out:
        for _, line in zip(range(n), f, strict=False):
            out.write(json.dumps({"text": json.loads(line)["text"]}) + "\n")
    model = folder / "quality.bin"
    report = train_classifier(read_examples([positive]), read_examples([negative]), model)
    held = report["held_out"]
    print(
        f"quality classifier: held-out precision {held.get('precision')}, "
        f"recall {held.get('recall')}",
        flush=True,
    )
    return model


def ablation_spec(
    corpus: Path,
    output: Path,
    steps: int,
    seeds: list[int],
    grid: bool = False,
    quality_model: Path | None = None,
) -> dict[str, Any]:
    quality = (
        [
            {
                "kind": "quality_classifier",
                "model_path": str(quality_model),
                "top_fraction": QUALITY_TOP_FRACTION,
            }
        ]
        if quality_model
        else []
    )
    return {
        "name": "bench-ablation",
        "corpus": str(corpus),
        "output": str(output),
        "curate": {"parts_per_file": 2},
        "steps": STEPS + quality,
        "seeds": seeds,
        "grid": grid,
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--no-quality",
        action="store_true",
        help="full curation without the quality classifier (as this bench ran before it had one)",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="also full curation minus one step group at a time (no_heuristics, no_language, "
        "no_minhash, no_quality where the steps hold it)",
    )
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
        # ports of its own: a control plane or a Ray dashboard the user already runs keeps its own
        api_port=free_port(),
        ray_dashboard_port=free_port(),
    )
    server = BackgroundServer(settings)
    server.start()
    started = time.monotonic()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            spec = ablation_spec(
                work / "corpus",
                work / "ablation",
                args.steps,
                args.seeds,
                args.grid,
                None if args.no_quality else train_quality_model(work / "quality"),
            )
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
    arm_names = [s.removeprefix("curate_") for s in jobs if s.startswith("curate_")]
    for arm in arm_names:
        curated = jobs[f"curate_{arm}"]["result"]["stats"]
        tokens = jobs[f"tokenize_{arm}"]["result"]["stats"]["splits"]["train"]["tokens"]
        for seed in args.seeds:
            trained = jobs[f"train_{arm}_s{seed}"]["result"]
            print(
                f"{arm} seed {seed}: kept {curated['kept']['documents']} of "
                f"{curated['documents']} documents, {tokens} train tokens; trained "
                f"{trained['steps']} steps on {trained['tokens_seen']} tokens, final loss "
                f"{trained['final_loss']:.3f}"
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

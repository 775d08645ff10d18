"""``llmforge demo``: the whole journey on embedded defaults, through the REST API.

Starts the control plane (local Ray head, SQLite, local artifacts), submits a curate → tokenize →
train → evaluate pipeline, follows it while metrics arrive, and prints what each stage did. With
``LLMFORGE_ARTIFACT_ROOT=s3://…`` every stage reads and writes object storage instead, and a
corpus on this machine's disk is first uploaded there: no worker reads the control plane's disk.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from llm import storage
from services.demo_data import Corpus, resolve_corpus
from services.server import BackgroundServer
from services.settings import Settings
from services.store.models import DEFAULT_TEAM

console = Console(width=None if Console().is_terminal else 120)


def pipeline_body(corpus: str, work: str, *, steps: int, workers: int) -> dict[str, Any]:
    """The demo pipeline over ``corpus``, its outputs under the folder or prefix ``work``."""
    return {
        "name": "demo",
        "stages": [
            {
                "name": "curate",
                "kind": "curate",
                "spec": {
                    "input": corpus,
                    "output": storage.join(work, "curated"),
                    "steps": [
                        {"kind": "length"},
                        {"kind": "language", "languages": ["en"]},
                        {"kind": "gopher_quality"},
                        {"kind": "pii"},
                        {"kind": "exact_dedup"},
                        {"kind": "minhash_dedup"},
                    ],
                },
            },
            {
                "name": "tokenize",
                "kind": "tokenize",
                "after": ["curate"],
                "spec": {
                    "input": "${curate.output}",
                    "output": storage.join(work, "tokens"),
                    "vocab_size": 2048,
                    "val_fraction": 0.05,
                },
            },
            {
                "name": "train",
                "kind": "train",
                "after": ["tokenize"],
                "spec": {
                    "data": "${tokenize.output}",
                    "output": storage.join(work, "train"),
                    "steps": steps,
                    "workers": workers,
                    "log_every": 10,
                    "eval_every": max(10, steps // 3),
                    "checkpoint_every": max(10, steps // 3),
                    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128},
                },
            },
            {
                "name": "evaluate",
                "kind": "evaluate",
                "after": ["train", "tokenize"],
                "spec": {
                    "checkpoint": "${train.output}",
                    "data": "${tokenize.output}",
                    "output": storage.join(work, "eval"),
                    "prompt": "The ",
                    "max_new_tokens": 40,
                },
            },
        ],
    }


def follow(client: httpx.Client, pipeline_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll the pipeline until it ends, printing state changes and the latest training loss."""
    seen: dict[str, str] = {}
    last_step = -1
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = client.get(f"/api/v1/pipelines/{pipeline_id}").raise_for_status().json()
        for job in p["jobs"]:
            if seen.get(job["id"]) != job["state"]:
                seen[job["id"]] = job["state"]
                extra = f" — {job['message']}" if job["message"] else ""
                console.print(f"  [bold]{job['stage']:>9}[/] {job['state']}{extra}")
            if job["stage"] == "train" and job["state"] == "RUNNING":
                last_step = _print_loss(client, job["id"], last_step)
        if p["state"] in ("SUCCEEDED", "FAILED"):
            return dict(p)
        time.sleep(1.0)
    raise TimeoutError(f"pipeline {pipeline_id} did not finish in {timeout_s:.0f}s")


def _print_loss(client: httpx.Client, job_id: str, last_step: int) -> int:
    records = (
        client.get(
            f"/api/v1/jobs/{job_id}/metrics", params={"name": "loss", "min_step": last_step + 1}
        )
        .raise_for_status()
        .json()["records"]
    )
    for r in records:
        console.print(f"            step {r['step']:>4}  loss {r['value']:.3f}")
        last_step = r["step"]
    return last_step


def report(p: dict[str, Any], client: httpx.Client, corpus: Corpus, wall_s: float) -> None:
    jobs = {j["stage"]: j for j in p["jobs"]}
    table = Table(title=f"llmforge demo: pipeline {p['id']} {p['state']} in {wall_s:.0f}s")
    table.add_column("stage")
    table.add_column("what it did")
    curate = (jobs["curate"]["result"] or {}).get("stats", {})
    if curate:
        removed = ", ".join(f"{k} {v['documents']}" for k, v in sorted(curate["removed"].items()))
        redacted = curate.get("redacted", {"documents": 0, "by_type": {}})
        by_type = ", ".join(f"{k} {v}" for k, v in redacted["by_type"].items()) or "nothing"
        table.add_row(
            "curate",
            f"{curate['documents']} docs in, {curate['kept']['documents']} "
            f"kept; removed: {removed}; PII redacted in {redacted['documents']} docs: {by_type}",
        )
    tok = (jobs["tokenize"]["result"] or {}).get("stats", {})
    if tok:
        s = tok["splits"]
        table.add_row(
            "tokenize",
            f"vocab {tok['vocab_size']} (used {tok['vocab_used']}); "
            f"train {s['train']['tokens']:,} tokens, val "
            f"{s['val']['tokens']:,}; {s['train']['bytes_per_token']} bytes/token",
        )
    train = jobs["train"]["result"] or {}
    if train:
        losses = client.get(
            f"/api/v1/jobs/{jobs['train']['id']}/metrics", params={"name": "loss"}
        ).json()["records"]
        table.add_row(
            "train",
            f"{train['steps']} steps, {train['parameters']:,} params, loss "
            f"{train['first_loss']:.3f} → {train['final_loss']:.3f}; "
            f"{train['last']['tokens_per_s']:,.0f} tokens/s; "
            f"{len(losses)} loss points via the API",
        )
    ev = jobs["evaluate"]["result"] or {}
    if ev:
        table.add_row(
            "evaluate",
            f"val loss {ev['val_loss']:.3f}, perplexity {ev['val_ppl']:.1f}"
            f"\nsample: {ev['prompt']!r} → {ev['completion']!r}",
        )
    console.print(table)
    console.print(f"corpus: {corpus.origin}")
    for stage, job in jobs.items():
        console.print(f"  {stage:>9}: {job['dashboard_url']}")


def run_demo(
    settings: Settings, *, user_input: str | None, steps: int, workers: int, timeout_s: float
) -> int:
    started = time.monotonic()
    run = datetime.now().strftime("%Y%m%d-%H%M%S")
    # The demo submits as the bootstrap admin, of the default team: its work goes in that
    # team's area, and its corpus is a shared root of its control plane (services/roots.py).
    work = storage.join(settings.team_area(DEFAULT_TEAM), "demo", run)
    remote = storage.is_remote(work)
    corpus = resolve_corpus(user_input, storage.scratch("demo", run) if remote else Path(work))
    if remote and not storage.is_remote(corpus.path):
        # The stages may run on any node: the corpus goes where they all read, object storage.
        name = "" if os.path.isdir(corpus.path) else os.path.basename(corpus.path)
        uploaded = storage.join(work, "input", name)
        storage.upload(corpus.path, uploaded)
        corpus = Corpus(uploaded, f"{corpus.origin}, uploaded to {uploaded}")
    console.print(f"[bold]llmforge demo[/]: corpus {corpus.origin}")
    shared = ",".join([*settings.shared_root_list, corpus.path])
    server = BackgroundServer(settings.model_copy(update={"shared_roots": shared}))
    console.print("starting the control plane (local Ray head, SQLite, local artifacts)…")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=server.headers) as client:
            body = pipeline_body(corpus.path, work, steps=steps, workers=workers)
            p = client.post("/api/v1/pipelines", json=body)
            if p.status_code != 201:
                console.print(f"[red]pipeline rejected[/]: {p.status_code} {p.text}")
                return 2
            console.print(
                f"pipeline {p.json()['id']} submitted; Ray dashboard: "
                f"{p.json()['jobs'][0]['dashboard_url'] or ''}"
            )
            final = follow(client, p.json()["id"], timeout_s)
            report(final, client, corpus, time.monotonic() - started)
    finally:
        server.stop()
    return 0 if final["state"] == "SUCCEEDED" else 1

"""A control plane with API keys on its own local Ray head, real jobs on it, and headless
Chromium (Debian's ``chromium``, driven by Playwright's Python package) to look at it through
the web console.

Everything the console tests look at is started once per module, in the background where it
can be (a curate and a train job on Ray, a rating campaign generating), so the browser works
while Ray does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from tests.llm.conftest import SHAKESPEARE, build_shard_folder, shakespeare_docs
from tests.services.tiny_models import seeded_checkpoint
from tests.shared import DATA

CHROMIUM = os.environ.get("LLMFORGE_CHROMIUM", "/usr/bin/chromium")
# The flags the machine notes give: no sandbox as root, and no calls to Google's hosts.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}


@dataclass
class World:
    server: BackgroundServer
    http: httpx.Client
    keys: dict[str, str]  # role -> raw key
    curate: dict[str, Any]
    train: dict[str, Any]
    models: list[str]
    campaign: str
    shots: Path

    @property
    def url(self) -> str:
        return self.server.url

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/jobs/{job_id}", headers=self.as_("admin"))
        return dict(r.raise_for_status().json())

    def wait_job(self, job_id: str, states: set[str], timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            assert job["state"] not in TERMINAL - states, job
            assert time.monotonic() < deadline, f"job not {states} in {timeout_s} s: {job}"
            time.sleep(0.3)


def _corpus(folder: Path) -> Path:
    """Tiny Shakespeare paragraphs, some too short for the length step and some repeated."""
    docs = shakespeare_docs(20_000)[:60]
    docs += docs[:6]  # exact duplicates
    folder.mkdir(parents=True)
    path = folder / "corpus.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


def _submit(http: httpx.Client, headers: dict[str, str], kind: str, spec: dict[str, Any]) -> Any:
    r = http.post("/api/v1/jobs", json={"kind": kind, "spec": spec, "max_retries": 2},
                  headers=headers)  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


def _key(http: httpx.Client, admin: dict[str, str], role: str) -> str:
    r = http.post("/api/v1/keys", json={"name": role, "role": role}, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} absent")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    work = tmp_path_factory.mktemp("console")
    home = Path(tempfile.mkdtemp(prefix="llmforge-console-home-"))
    settings = Settings(
        home=home,
        shared_roots=str(DATA),
        shared_write_roots=str(tmp_path_factory.getbasetemp()),
        api_port=free_port(),
        ray_dashboard_port=free_port(),
        ray_num_cpus=3,  # the train job's worker beside the curate job's tasks
        ray_object_store_mb=128,
        poll_interval_s=0.3,
        rate_limit_per_min=0,
        auth=True,
    )
    server = BackgroundServer(settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            admin = server.headers
            keys = {"admin": admin["Authorization"].removeprefix("Bearer ")}
            keys |= {role: _key(http, admin, role) for role in ("member", "read_only")}
            member = {"Authorization": f"Bearer {keys['member']}"}
            shards = build_shard_folder(work / "shards", shakespeare_docs(60_000))
            train = _submit(http, member, "train", {
                "data": str(shards), "output": str(work / "train"), "steps": 100_000,
                "workers": 1, "batch_size": 2, "warmup_steps": 5, "log_every": 1,
                "eval_every": 10, "eval_batches": 1, "checkpoint_every": 100_000,
                "tensorboard": False, "model": TINY_MODEL,
            })  # fmt: skip
            curate = _submit(http, member, "curate", {
                "input": str(_corpus(work / "raw")), "output": str(work / "curated"),
                "steps": [{"kind": "length", "min_chars": 60}, {"kind": "exact_dedup"}],
                "parts_per_file": 1,
            })  # fmt: skip
            models = []
            for seed in (0, 4):
                path = seeded_checkpoint(work / f"ckpt{seed}", seed)
                body = {"name": f"tiny{seed}", "kind": "checkpoint", "uri": str(path)}
                r = http.post("/api/v1/models", json=body, headers=member)
                assert r.status_code == 201, r.text
                models.append(r.json()["id"])
            campaign = http.post("/api/v1/ratings/campaigns", headers=member, json={
                "name": "console", "models": models, "prompts": ["Hello world, the"],
                "sampling": {"max_tokens": 8, "temperature": 0}, "seed": 3,
            })  # fmt: skip
            assert campaign.status_code == 201, campaign.text
            yield World(server, http, keys, curate, train, models, campaign.json()["id"],
                        tmp_path_factory.mktemp("console-screenshots"))  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()

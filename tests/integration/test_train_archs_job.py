"""An encoder and an encoder-decoder trained by the train job through the REST API, on the
shared local Ray head with two DDP workers; each loses rank 0 once mid-run and resumes from its
last checkpoint, replaying the lost steps with the same losses (the objective's noise comes
back with the loader state). The decoder's run is tests/integration/test_train_job.py."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, sentinel_token
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, run_with_env
from tests.llm.conftest import SHAKESPEARE, build_shard_folder, shakespeare_docs
from tests.shared import DATA, require

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS, LOG_EVERY, CHECKPOINT_EVERY = 20, 5, 10
FAIL_AT, RESUME_FROM = 15, 10
# each arch's objective with its own noise settings
OBJECTIVES = {
    "encoder": {"objective": "masked_lm", "mask_prob": 0.2},
    "encoder_decoder": {"objective": "span_corruption", "noise_density": 0.2, "mean_span": 2.0},
}
ARCHS = tuple(OBJECTIVES)
SPECIALS = (EOS_TOKEN, MASK_TOKEN, *(sentinel_token(i) for i in range(16)))


# the encoder-decoder trains on a mixture of two real sources
NEWS = DATA / "text/reuters21578/reuters21578.jsonl.gz"
MIXTURE = {"plays": 0.7, "news": 0.3}


def _news(chars: int) -> list[str]:
    texts: list[str] = []
    with gzip.open(require(NEWS), "rt", encoding="utf-8") as f:
        while sum(map(len, texts)) < chars:
            texts.append(json.loads(next(f))["text"])
    return texts


@pytest.fixture(scope="module")
def arch_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} absent")
    folder = tmp_path_factory.mktemp("arch-job-shards")
    plays, news = shakespeare_docs(80_000), _news(40_000)
    sources = ["plays"] * len(plays) + ["news"] * len(news)
    return build_shard_folder(folder, plays + news, special_tokens=SPECIALS, sources=sources)


@pytest.fixture(scope="module", params=ARCHS)
def arch_job(
    request: pytest.FixtureRequest,
    control_plane: BackgroundServer,
    arch_shards: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, Any], Path]:
    arch: str = request.param
    out = tmp_path_factory.mktemp(f"train-{arch}") / "out"
    spec = {
        "data": str(arch_shards),
        "output": str(out),
        "steps": STEPS,
        "workers": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "log_every": LOG_EVERY,
        "eval_every": CHECKPOINT_EVERY,
        "eval_batches": 2,
        "checkpoint_every": CHECKPOINT_EVERY,
        "max_failures": 1,
        "tensorboard": False,
        **OBJECTIVES[arch],
        "model": {**TINY_MODEL, "arch": arch},
        "debug": {"fail_at_step": FAIL_AT},
        **({"mixture": {"weights": MIXTURE}} if arch == "encoder_decoder" else {}),
    }
    return arch, run_with_env(control_plane, spec, {}), out


def _metric(url: str, job_id: str, name: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/jobs/{job_id}/metrics", params={"name": name}, timeout=30)
    records: list[dict[str, Any]] = body.raise_for_status().json()["records"]
    return sorted(records, key=lambda r: r["time"])


def test_each_arch_trains_on_two_workers_and_resumes_exactly(
    arch_job: tuple[str, dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    arch, job, out = arch_job
    assert job["state"] == "SUCCEEDED", job["message"]
    assert f"injected failure at step {FAIL_AT}" in job["logs"]
    result = job["result"]
    assert result["steps"] == STEPS, result
    if arch == "encoder":  # two ranks of 8 windows of block_size tokens a step
        assert result["tokens_seen"] == STEPS * 2 * 8 * TINY_MODEL["block_size"], result
    else:  # the decoder's targets: the spans, each after its sentinel
        assert 0 < result["tokens_seen"] < STEPS * 2 * 8 * TINY_MODEL["block_size"], result

    records = _metric(control_plane.url, job["id"], "loss")
    steps = Counter(r["step"] for r in records)
    replayed = {s for s, n in steps.items() if n > 1}
    assert replayed == set(range(RESUME_FROM + LOG_EVERY, FAIL_AT + 1, LOG_EVERY))
    by_step: dict[int, list[float]] = {}
    for r in records:
        by_step.setdefault(r["step"], []).append(r["value"])
    for step in replayed:
        first, again = by_step[step]
        assert again == pytest.approx(first, rel=1e-4), (arch, step)
    assert by_step[STEPS][-1] < by_step[LOG_EVERY][0], by_step

    if arch == "encoder_decoder":  # the mixture held through the restart
        realised = result["mixture"]["realised"]
        assert realised == pytest.approx(MIXTURE, abs=0.01), result["mixture"]
    else:
        assert result["mixture"] is None

    # validation scored the arch's own objective, and the checkpoint says which model it holds
    assert _metric(control_plane.url, job["id"], "val_loss")
    assert Path(result["checkpoint"]).parent == out / "checkpoints"
    config = json.loads((Path(result["checkpoint"]) / "config.json").read_text())
    assert config["arch"] == arch

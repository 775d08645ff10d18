"""A finetune job through the REST API on the shared local Ray head: a tiny model pretrained
here is fine-tuned on real Alpaca records by two DDP workers under Ray Train; then the ways a
bad spec or bad input is refused, before any worker starts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.specs import FinetuneSpec
from llm.model.config import ModelConfig
from llm.tokenizer.bpe import load_tokenizer, save_tokenizer, train_bpe
from llm.train.checkpoint import load_model
from llm.train.pretrain import TrainConfig, train
from ray_jobs import finetune as finetune_job
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import MetricsReporter
from services.server import BackgroundServer
from tests.integration.test_train_job import job_body, tiny_shards, wait_for_job
from tests.shared import DATA

ALPACA_FILE = DATA / "instruct" / "alpaca_5000.json"
STEPS, LOG_EVERY, EVAL_EVERY, SAMPLES = 12, 3, 6, 2
# a short prompt, so that most Alpaca records fit the tiny model's 128 tokens
TEMPLATE = "### Instruction:\n{instruction}\n{input}\n### Response:\n"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(token-shard folder, pretraining output folder) of a tiny GPT trained for 20 steps."""
    if not ALPACA_FILE.is_file():
        pytest.skip(f"{ALPACA_FILE} absent")
    work = tmp_path_factory.mktemp("finetune-base")
    shards = tiny_shards(work / "shards")
    vocab = load_tokenizer(shards / "tokenizer.json").get_vocab_size()
    model = ModelConfig(vocab_size=vocab, block_size=128, n_layer=2, n_head=2, n_embd=64)
    cfg = TrainConfig(
        steps=20, batch_size=8, seq_len=64, warmup_steps=2, eval_every=20, eval_batches=2,
        checkpoint_every=20,
    )  # fmt: skip
    train(cfg, model, shards, work / "pretrain")
    return shards, work / "pretrain"


def finetune_spec(shards: Path, base: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "checkpoint": str(base),  # the pretraining output: its latest checkpoint is used
        "tokenizer": str(shards),
        "data": str(ALPACA_FILE),
        "output": str(out),
        "template": TEMPLATE,
        "max_samples": 120,
        "val_fraction": 0.1,
        "steps": STEPS,
        "batch_size": 4,
        "workers": 2,
        "lr": 2e-3,
        "min_lr": 2e-4,
        "warmup_steps": 2,
        "log_every": LOG_EVERY,
        "eval_every": EVAL_EVERY,
        "checkpoint_every": EVAL_EVERY,
        "samples": SAMPLES,
        "max_new_tokens": 16,
        **overrides,
    }


@pytest.fixture(scope="module")
def finetuned(
    control_plane: BackgroundServer, pretrained: tuple[Path, Path], tmp_path_factory
) -> tuple[dict[str, Any], Path]:
    shards, base = pretrained
    out = tmp_path_factory.mktemp("finetune-job") / "out"
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/jobs", json=job_body("finetune", finetune_spec(shards, base, out)))
        assert r.status_code == 201, r.text
        job = wait_for_job(client, r.json()["id"], timeout_s=240)
    return job, out


@pytest.mark.ray
@pytest.mark.slow
def test_the_job_tunes_the_model_and_shows_samples(finetuned, pretrained) -> None:
    job, out = finetuned
    assert job["state"] == "SUCCEEDED", job["message"]
    result = job["result"]
    assert result == json.loads((out / "result.json").read_text())
    assert result["steps"] == STEPS and result["checkpoint"].endswith(f"step_{STEPS:08d}")
    assert result["base_checkpoint"].endswith("step_00000020")
    assert result["val_loss"] < result["base_val_loss"]
    tuned = load_model(result["checkpoint"])
    assert tuned.config == load_model(result["base_checkpoint"]).config
    samples = result["samples"]
    assert len(samples) == SAMPLES
    for sample in samples:
        assert sample["prompt"].startswith("### Instruction:\n")
        assert sample["prompt"].endswith("### Response:\n") and sample["reference"]
        assert {"base_completion", "tuned_completion"} <= set(sample)
    summary = json.loads((out / finetune_job.SUMMARY_FILE).read_text())
    assert summary["samples"] == samples
    # the data's counts, with every rejected record written aside with its reason
    data = result["data"]
    assert data["records"] == 120 and data["kept"] + data["rejected"] == 120
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == data["rejected"] and all(r["reason"] for r in rejected)
    # the tokenizer travels with the output, so a finetune of this output finds it by itself
    shards, _ = pretrained
    tokenizer = (out / "tokenizer.json").read_bytes()
    assert tokenizer == (shards / "tokenizer.json").read_bytes()


def _records(url: str, job_id: str, name: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/jobs/{job_id}/metrics", params={"name": name}, timeout=30)
    records: list[dict[str, Any]] = r.raise_for_status().json()["records"]
    return records


@pytest.mark.ray
@pytest.mark.slow
def test_metrics_reached_the_api(finetuned, control_plane: BackgroundServer) -> None:
    job, _ = finetuned
    losses = _records(control_plane.url, job["id"], "loss")
    assert sorted({r["step"] for r in losses}) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    val = _records(control_plane.url, job["id"], "val_loss")
    assert sorted({r["step"] for r in val}) == [0, EVAL_EVERY, STEPS]  # 0: the base model
    for name in ("lr", "tokens_per_s", "grad_norm"):
        assert _records(control_plane.url, job["id"], name), name


@pytest.mark.ray
@pytest.mark.slow
def test_a_bad_spec_is_a_422_naming_the_field(control_plane: BackgroundServer, tmp_path) -> None:
    base = {"checkpoint": str(tmp_path), "data": str(tmp_path / "d.json"), "output": str(tmp_path)}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"steps": 0}, "steps"),
        ({"template": "{{ instruction }} {{ answer }}"}, "unknown fields ['answer']"),
        ({"steps": 5, "epochs": 1}, "steps or epochs"),
        ({"fields": {"reply": "output"}}, "unknown fields ['reply']"),
        ({"learning_rate": 1e-4}, "learning_rate"),
    ]
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        for extra, expected in cases:
            r = client.post("/api/v1/jobs", json=job_body("finetune", {**base, **extra}))
            assert r.status_code == 422, (extra, r.text)
            assert expected in r.text, (extra, r.text)


@pytest.mark.ray
@pytest.mark.slow
def test_a_missing_data_file_fails_the_job_with_its_path(
    control_plane: BackgroundServer, pretrained, tmp_path: Path
) -> None:
    shards, base = pretrained
    spec = finetune_spec(shards, base, tmp_path / "out", data=str(tmp_path / "absent.jsonl"))
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        body = {**job_body("finetune", spec), "max_retries": 0}
        r = client.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job = wait_for_job(client, r.json()["id"], timeout_s=120)
    assert job["state"] == "FAILED"
    assert f"instruction data not found: {tmp_path / 'absent.jsonl'}" in job["message"]


# --- refused before any worker starts (no Ray needed) -------------------------------------------


def run_spec(spec: dict[str, Any]) -> None:
    finetune_job.run(FinetuneSpec.model_validate(spec))


def test_a_folder_that_is_not_a_checkpoint_is_named(pretrained, tmp_path: Path) -> None:
    shards, _ = pretrained
    with pytest.raises(JobError, match=re.escape(f"no checkpoint found at {tmp_path / 'nothing'}")):
        run_spec(finetune_spec(shards, tmp_path / "nothing", tmp_path / "out"))
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text('{"vocab_size": 512}')
    with pytest.raises(JobError, match=re.escape(f"{fake} is not an llmforge checkpoint")):
        run_spec(finetune_spec(shards, fake, tmp_path / "out"))
    assert not (tmp_path / "out" / "ray").exists()


def test_a_file_without_one_valid_record_is_refused(pretrained, tmp_path: Path) -> None:
    shards, base = pretrained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi"}\n[1, 2]\nnot json\n{"instruction": "x", "output": ""}\n')
    out = tmp_path / "out"
    with pytest.raises(JobError, match=re.escape(f"{bad}: no valid record among 4")):
        run_spec(finetune_spec(shards, base, out, data=str(bad)))
    reasons = [
        json.loads(line)["reason"] for line in (out / "rejected.jsonl").read_text().splitlines()
    ]
    assert reasons == ["missing_field", "bad_message", "invalid_json", "empty_output"]
    assert not (out / "ray").exists()


def test_a_tokenizer_of_another_vocabulary_is_refused(pretrained, tmp_path: Path) -> None:
    shards, base = pretrained
    small = tmp_path / "small.json"
    tok = train_bpe(["a b c d e f g"] * 10, vocab_size=300)  # fewer merges than it may have
    save_tokenizer(tok, small)
    size = tok.get_vocab_size()
    message = f"tokenizer {small} has {size} tokens, but the checkpoint's vocab_size is 512"
    with pytest.raises(JobError, match=re.escape(message)):
        run_spec(finetune_spec(shards, base, tmp_path / "out", tokenizer=str(small)))
    # without a tokenizer beside the checkpoint, the job asks for the shard folder
    with pytest.raises(JobError, match="set tokenizer to the token-shard folder"):
        run_spec(finetune_spec(shards, base, tmp_path / "out", tokenizer=None))


def test_a_template_is_rendered_first_by_the_job_not_the_api(pretrained, tmp_path: Path) -> None:
    shards, base = pretrained
    # the API only parses: rendering this one would take a gigabyte of the API's memory
    huge = FinetuneSpec.model_validate(
        finetune_spec(shards, base, tmp_path / "out", template="{instruction:>1000000000}")
    )
    assert huge.template == "{instruction:>1000000000}"
    with pytest.raises(JobError, match="template: template fails to render: Unknown conversion"):
        run_spec(finetune_spec(shards, base, tmp_path / "out", template="{instruction!z}"))
    assert not (tmp_path / "out" / "ray").exists()


def test_a_dpo_file_without_one_valid_pair_is_refused(pretrained, tmp_path: Path) -> None:
    shards, base = pretrained
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(
        '{"prompt": "hi", "chosen": "a"}\n{"prompt": "hi", "chosen": "a", "rejected": "a"}\n'
        '{"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}\n'
    )
    out = tmp_path / "out"
    with pytest.raises(JobError, match=re.escape(f"{bad}: no valid record among 3")):
        run_spec(finetune_spec(shards, base, out, data=str(bad), method="dpo"))
    reasons = [
        json.loads(line)["reason"] for line in (out / "rejected.jsonl").read_text().splitlines()
    ]
    assert reasons == ["missing_field", "identical_responses", "prompt_ends_with_assistant"]
    assert not (out / "ray").exists()


# --- LoRA, with the workers' function run in this process ---------------------------------------


class _InProcess:
    """WorkerReporting without Ray Train: the one rank's metrics go to metrics.jsonl."""

    rank = 0

    def __init__(self, output: str) -> None:
        self.reporter = MetricsReporter(output, publish_to_ray=False)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.reporter.log(step, metrics)

    def on_checkpoint(self, step: int, path: object, metrics: dict[str, float]) -> None:
        self.reporter.flush()

    def flush(self) -> None:
        self.reporter.flush()


def test_a_lora_job_leaves_an_adapter_on_its_base(
    pretrained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards, base = pretrained
    monkeypatch.setattr(finetune_job, "WorkerReporting", _InProcess)
    monkeypatch.setattr(finetune_job, "rank_nodes", lambda: ["local"])
    monkeypatch.setattr(finetune_job, "launch", lambda worker, config, job: worker(config))
    lora = {"method": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["qkv", "fc"]}}
    spec = finetune_spec(
        shards, base, tmp_path / "out", **lora, workers=1, steps=6, lr=1e-2, eval_every=6,
        checkpoint_every=6, max_samples=60, samples=1, max_new_tokens=4,
    )  # fmt: skip
    result = finetune_job.run(FinetuneSpec.model_validate(spec))
    assert result["method"] == "lora" and result["val_loss"] < result["base_val_loss"]
    assert 0 < result["trainable_parameters"] < 0.1 * result["parameters"]
    folder = Path(result["checkpoint"])
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_checkpoint"] == result["base_checkpoint"]
    assert adapter["target_modules"] == ["fc", "qkv"]
    assert {"base_completion", "tuned_completion"} <= set(result["samples"][0])

    bad = {"method": "lora", "lora": {"target_modules": ["qkv", "q_proj"]}}
    message = "lora.target_modules: ['q_proj'] name no linear layer of the model's blocks"
    with pytest.raises(JobError, match=re.escape(message)):
        run_spec(finetune_spec(shards, base, tmp_path / "bad", **bad))
    assert not (tmp_path / "bad" / "rejected.jsonl").exists()  # refused before the data

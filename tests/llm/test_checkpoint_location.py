"""Checkpoints on object storage (a real S3 server, moto's, on loopback), one process: a run
writes to s3://, loses its node's scratch, and resumes from S3 exactly; retention holds on S3;
a folder without its completion marker is never resumed from."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm import storage
from llm.train.checkpoint import STATE_FILE, step_dir
from llm.train.checkpoint.location import complete_uris, latest_uri
from llm.train.pretrain import train
from tests.llm.test_loop import Recorder, _Crash, base_cfg, deterministic, tiny_model, vocab_of
from tests.s3 import S3, s3_server

BUCKET = "llmforge-loc"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server(BUCKET) as server:
        yield server


@pytest.fixture
def env(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    scratch = tmp_path / "scratch"
    monkeypatch.setenv(storage.SCRATCH_ENV, str(scratch))
    return scratch


def test_a_run_on_s3_resumes_from_s3_with_an_empty_scratch(
    shakespeare_shards: Path, tmp_path: Path, env: Path, s3: S3
) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    cfg = base_cfg(steps=30, checkpoint_every=10, keep_last=1)
    reference = Recorder()
    train(cfg, model, shakespeare_shards, tmp_path / "local", on_log=reference.on_log)

    def crash_at_20(step: int, path: object, metrics: dict[str, float]) -> None:
        if step == 20:
            raise _Crash("right after the step-20 checkpoint")

    out = f"s3://{BUCKET}/resume"
    first = Recorder()
    with pytest.raises(_Crash):
        train(cfg, model, shakespeare_shards, out, on_log=first.on_log, on_checkpoint=crash_at_20)
    shutil.rmtree(env)  # the run goes on elsewhere: nothing of this node's scratch is left
    second = Recorder()
    result = train(cfg, model, shakespeare_shards, out, on_log=second.on_log)

    assert sorted(second.logs) == list(range(21, 31))
    for step in range(1, 31):
        got = (first.logs if step <= 20 else second.logs)[step]
        assert deterministic(got) == deterministic(reference.logs[step]), step
    root = f"{out}/checkpoints"
    assert result["checkpoint"] == storage.join(root, step_dir("", 30).name)
    best = result["best_checkpoint"]
    assert best == storage.read_json(f"{root}/best.json")
    # keep_last=1 on S3: the newest checkpoint, and the best one by val_loss
    kept = {step_dir("", s).name for s, _ in complete_uris(root)}
    assert kept == {step_dir("", 30).name, best["path"]}
    staged = [k for k in s3.keys(BUCKET, "resume/") if "/.tmp-" in k]
    assert not staged


def test_a_folder_without_its_marker_is_never_resumed_from(
    shakespeare_shards: Path, tmp_path: Path, env: Path, s3: S3
) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    out = f"s3://{BUCKET}/partial"
    train(base_cfg(steps=10, checkpoint_every=10), model, shakespeare_shards, out)
    root = f"{out}/checkpoints"
    # a save of step 20 cut short: every file but the marker made it to S3
    complete = storage.join(root, step_dir("", 10).name)
    partial = storage.join(root, step_dir("", 20).name)
    for entry in storage.list_files(complete):
        name = entry.uri[len(complete) + 1 :]
        if name != STATE_FILE:
            storage.write_bytes(storage.join(partial, name), storage.read_bytes(entry.uri))
    assert latest_uri(root) == complete

    rec = Recorder()
    train(
        base_cfg(steps=12, checkpoint_every=10), model, shakespeare_shards, out, on_log=rec.on_log
    )
    assert sorted(rec.logs) == [11, 12]  # resumed from step 10, not the partial step 20

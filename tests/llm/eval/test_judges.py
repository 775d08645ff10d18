"""Judges named by a spec: an llmforge classifier checkpoint scores a generation task's
completions through evaluate_tasks, the evaluate job resolves and builds the spec's judges in
its workers (run here in-process, without Ray), and ``llmforge eval --judge`` passes them on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import yaml

from contracts.specs import EvaluateSpec
from llm.eval.judge import ClassifierJudge, LoglikJudge, load_judge
from llm.eval.lm import LlmforgeModel
from llm.eval.runner import evaluate_tasks
from llm.eval.task_config import resolve_tasks
from llm.finetune.classify import load_classifier, predict_proba
from llm.tokenizer.bpe import save_tokenizer
from llm.train.checkpoint import save_checkpoint
from ray_jobs import evaluate as job
from ray_jobs.entrypoint import JobError
from services.cli import eval as cli_eval
from services.cli import main
from services.cli.main import build_parser
from tests.llm.eval.conftest import tiny_gpt
from tests.llm.test_finetune_classify import classifier_checkpoint


@pytest.fixture
def gen_task(tmp_path: Path) -> Path:
    data = tmp_path / "g.jsonl"
    rows = [
        {"prompt": "The king said", "answer": "that the queen"},
        {"prompt": "Hello", "answer": "world"},
        {"prompt": "A man is", "answer": "sitting"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    task = {
        "task": "gen",
        "data": str(data),
        "output_type": "generate_until",
        "doc_to_text": "{{ prompt }}",
        "doc_to_target": "answer",
        "generation": {"until": ["."], "max_gen_toks": 5},
        "metrics": ["exact_match"],
    }
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(task))
    return tmp_path / "gen.yaml"


@pytest.fixture
def judge_out(tmp_path: Path, tok: tokenizers.Tokenizer) -> Path:
    """A classification run's output folder: its checkpoint, and its tokenizer at the top."""
    classifier_checkpoint(tmp_path / "cls", tok, labels=("bad", "fine", "good"))
    save_tokenizer(tok, tmp_path / "cls" / "tokenizer.json")
    return tmp_path / "cls"


def expected_scores(judge_out: Path, tok: tokenizers.Tokenizer, samples: list[dict]) -> list:
    model, _ = load_classifier(next((judge_out / "checkpoints").iterdir()))
    texts = [s["context"] + s["completion"] for s in samples]
    probs = predict_proba(model, tok, texts)
    return (probs[:, 1] + probs[:, 2]).tolist()  # "fine" and "good" count as good


def test_a_classifier_judge_scores_generated_completions(
    lm: LlmforgeModel, tok: tokenizers.Tokenizer, gen_task: Path, judge_out: Path
) -> None:
    judge = load_judge(judge_out, labels=["fine", "good"], name="quality")
    out = evaluate_tasks(lm, tasks=[gen_task], judges=[judge], log_samples=True)
    result = out["results"]["gen"]
    expected = expected_scores(judge_out, tok, result["samples"])
    assert [s["judge_quality"] for s in result["samples"]] == pytest.approx(expected, abs=1e-6)
    mean = sum(expected) / len(expected)
    assert result["metrics"]["judge_quality"]["value"] == pytest.approx(mean, abs=1e-6)
    assert 0.0 < mean < 1.0


def _spec(lm_ckpt: Path, tmp_path: Path, task: Path, **judge: object) -> EvaluateSpec:
    return EvaluateSpec.model_validate(
        {
            "checkpoint": str(lm_ckpt),
            "output": str(tmp_path / "out"),
            "tasks": [str(task)],
            "judges": [judge],
        }
    )


@pytest.fixture
def lm_ckpt(tmp_path: Path, tok: tokenizers.Tokenizer) -> Path:
    model = tiny_gpt(tok.get_vocab_size())
    folder = tmp_path / "lm"
    save_checkpoint(folder, model=model, config=model.config, optimizer=None, trainer_state={})
    save_tokenizer(tok, folder / "tokenizer.json")
    return folder


def test_the_evaluate_job_builds_the_specs_judges_in_its_workers(
    tmp_path: Path, tok: tokenizers.Tokenizer, gen_task: Path, judge_out: Path, lm_ckpt: Path
) -> None:
    spec = _spec(lm_ckpt, tmp_path, gen_task, model=str(judge_out), labels=["fine", "good"])
    [resolved] = job.resolve_judges(spec)
    step = next((judge_out / "checkpoints").iterdir())
    assert resolved["model"] == str(step) and resolved["name"] == "cls"
    assert resolved["tokenizer"] == str(judge_out / "tokenizer.json")  # two folders up
    worker = job._Evaluator(str(lm_ckpt), None, {"log_samples": True}, [resolved])
    [task] = resolve_tasks([str(gen_task)])[0]
    result = worker.run(task, slice(0, 3))["results"]["gen"]
    expected = expected_scores(judge_out, tok, result["samples"])
    assert result["metrics"]["judge_cls"]["value"] == pytest.approx(
        sum(expected) / len(expected), abs=1e-6
    )


def test_the_job_refuses_judges_it_cannot_use_before_ray_starts(
    tmp_path: Path, gen_task: Path, judge_out: Path, lm_ckpt: Path
) -> None:
    not_a_classifier = _spec(lm_ckpt, tmp_path, gen_task, model=str(lm_ckpt))
    with pytest.raises(JobError, match=r"judges\[0\]\.model: .* language model's checkpoint"):
        job.resolve_judges(not_a_classifier)
    unknown = _spec(lm_ckpt, tmp_path, gen_task, model=str(judge_out), labels=["great"])
    with pytest.raises(JobError, match=r"judges\[0\]\.labels: judge labels \['great'\]"):
        job.resolve_judges(unknown)
    unnamed = _spec(lm_ckpt, tmp_path, gen_task, model=str(judge_out))  # bad, fine, good
    assert job.resolve_judges(unnamed)[0]["labels"] == []  # "good" is found by its name
    missing = _spec(lm_ckpt, tmp_path, gen_task, model=str(tmp_path / "nowhere"))
    with pytest.raises(JobError, match=r"judges\[0\]\.model: .*nowhere is not a folder"):
        job.resolve_judges(missing)
    quiz = tmp_path / "quiz.yaml"
    choice = {"output_type": "multiple_choice", "doc_to_choice": "{{ [answer] }}"}
    task = {**yaml.safe_load(gen_task.read_text()), **choice, "task": "quiz", "doc_to_target": 0}
    del task["generation"]
    quiz.write_text(yaml.safe_dump({**task, "metrics": ["acc"]}))
    with pytest.raises(JobError, match="none of the tasks is generate_until"):
        job.run(_spec(lm_ckpt, tmp_path, quiz, model=str(judge_out)))
    as_model = _spec(next((judge_out / "checkpoints").iterdir()), tmp_path, gen_task, model="x")
    with pytest.raises(JobError, match="is a classifier, not a language model"):
        job.run(as_model)


def test_load_judge_dispatches_on_kind_and_folder(
    tmp_path: Path, tok: tokenizers.Tokenizer, lm_ckpt: Path
) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    loglik = load_judge(lm_ckpt, kind="loglik", mode="yes_probability")
    assert isinstance(loglik, LoglikJudge) and loglik.name == "lm"
    [p_yes] = loglik.score(["The king said"], [" that the queen"])
    assert p_yes is not None and 0.0 < p_yes < 1.0
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=16, n_layer=1, n_head=2
    )
    cfg.id2label, cfg.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "hf")
    save_tokenizer(tok, tmp_path / "hf" / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(config))
    hf = load_judge(tmp_path / "hf", labels=["neg"])
    assert isinstance(hf, ClassifierJudge) and hf.label == 0 and hf.name == "hf"
    with pytest.raises(ValueError, match="judged by one label's logit: give one label"):
        load_judge(tmp_path / "hf", labels=["neg", "pos"])


def test_llmforge_eval_names_judges(
    tmp_path: Path, gen_task: Path, judge_out: Path, lm_ckpt: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_eval.parse_judge("cls") == {"model": str(judge_out)}
    assert cli_eval.parse_judge("s3://bucket/cls") == {"model": "s3://bucket/cls"}
    assert cli_eval.parse_judge('{"model": "cls", "labels": ["good"]}') == {
        "model": str(judge_out),
        "labels": ["good"],
    }
    judge = json.dumps({"model": "cls", "labels": ["fine", "good"], "name": "quality"})
    argv = ["eval", str(lm_ckpt), "--tasks", str(gen_task), "--output", "out"]
    args = build_parser().parse_args([*argv, "--judge", "cls", "--judge", judge])
    assert cli_eval._spec(args)["judges"] == [
        {"model": str(judge_out)},
        {"model": str(judge_out), "labels": ["fine", "good"], "name": "quality"},
    ]
    assert main([*argv, "--local", "--judge", judge]) == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["results"]["gen"]
    assert 0.0 < result["metrics"]["judge_quality"]["value"] < 1.0

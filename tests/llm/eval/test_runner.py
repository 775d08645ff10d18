"""evaluate_tasks end to end on tiny models: metrics, shards and merge, built-in tasks, the
Hugging Face path, generation, judges and the leaderboard table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from llm.eval.judge import ClassifierJudge, LoglikJudge
from llm.eval.lm import LlmforgeModel, load_eval_model
from llm.eval.loglik import Request, loglikelihood
from llm.eval.report import leaderboard_markdown
from llm.eval.runner import evaluate_tasks, merge, shard_slices, task_rows
from llm.model.hf import export_hf
from llm.tokenizer.bpe import save_tokenizer
from llm.train.checkpoint import save_checkpoint
from tests.llm.eval.conftest import needs_data, tiny_gpt

QUESTIONS = [
    ("The king said that the", ["queen would come", "sea is deep", "roof"], 0),
    ("Hello world, the world is", ["wide", "closest to the sun", "a man"], 0),
    ("A man is sitting on a", ["roof", "queen", "planet is closest"], 0),
    ("Which planet is closest to the", ["sun", "castle", "house of the king"], 0),
    ("He is ripping tiles off the", ["roof of the house", "world", "morning"], 1),
    ("the sea is", ["deep", "wide", "Mercury"], 2),
]


@pytest.fixture
def quiz(tmp_path: Path) -> Path:
    data = tmp_path / "quiz.jsonl"
    rows = [{"q": q, "choices": c, "gold": g} for q, c, g in QUESTIONS]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n")
    task = {
        "task": "quiz",
        "data": str(data),
        "output_type": "multiple_choice",
        "doc_to_text": "{{ q }}",
        "doc_to_choice": "choices",
        "doc_to_target": "{{ gold }}",
        "metrics": ["acc", "acc_norm", "acc_bytes"],
    }
    path = tmp_path / "quiz.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_multiple_choice_metrics_follow_the_loglikelihoods(lm, quiz):
    out = evaluate_tasks(lm, tasks=[quiz], log_samples=True, batch_size=4)
    result = out["results"]["quiz"]
    assert result["n"] == len(QUESTIONS)
    assert result["malformed"]["count"] == 1 and result["malformed"]["records"][0]["line"] == 7
    accs, norms = [], []
    for (q, choices, gold), sample in zip(QUESTIONS, result["samples"], strict=True):
        scores = loglikelihood(lm, [Request(q, " " + c) for c in choices], share_prefix=False)
        lls = [s.logprob for s in scores]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        accs.append(float(lls.index(max(lls)) == gold))
        per_char = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
        norms.append(float(per_char.index(max(per_char)) == gold))
    assert result["metrics"]["acc"]["value"] == pytest.approx(sum(accs) / len(accs))
    assert result["metrics"]["acc_norm"]["value"] == pytest.approx(sum(norms) / len(norms))
    assert result["random_baseline"] == pytest.approx(1 / 3)
    acc = result["metrics"]["acc"]["value"]
    assert result["normalised"]["acc"]["value"] == pytest.approx(
        max(0.0, (acc - 1 / 3) / (2 / 3) * 100)
    )
    json.dumps(out)  # results are JSON-ready


def test_shards_merge_to_the_whole_run(lm, quiz):
    whole = evaluate_tasks(lm, tasks=[quiz], log_samples=True)
    rows = task_rows([quiz])["quiz"]
    assert rows == len(QUESTIONS) + 1  # the malformed record is a row too
    slices = shard_slices(rows, 3)
    parts = [evaluate_tasks(lm, tasks=[quiz], items=s, log_samples=True) for s in slices]
    merged = merge(parts)["results"]["quiz"]
    expected = whole["results"]["quiz"]
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert merged["metrics"][metric]["value"] == pytest.approx(
            expected["metrics"][metric]["value"]
        )
        assert merged["metrics"][metric]["stderr"] == pytest.approx(
            expected["metrics"][metric]["stderr"]
        )
    assert merged["n"] == expected["n"] and merged["malformed"] == expected["malformed"]
    assert [s["row"] for s in merged["samples"]] == [s["row"] for s in expected["samples"]]
    with pytest.raises(ValueError, match="overlap"):
        merge([parts[0], parts[0]])
    with pytest.raises(ValueError, match="gap"):
        merge([parts[0], parts[2]])


def test_leaderboard_table_has_raw_and_normalised_columns(lm, quiz, tok):
    other = LlmforgeModel(tiny_gpt(tok.get_vocab_size(), n_layer=1), tok)
    runs = {
        name: evaluate_tasks(m, tasks=[quiz]) for name, m in (("tiny-2L", lm), ("tiny-1L", other))
    }
    table = leaderboard_markdown(runs)
    lines = table.strip().splitlines()
    assert lines[0] == "| Model | Average (normalised) | quiz acc_norm | quiz normalised |"
    assert lines[2].startswith("| tiny-2L | ") and lines[3].startswith("| tiny-1L | ")
    raw = runs["tiny-2L"]["results"]["quiz"]["metrics"]["acc_norm"]["value"] * 100
    assert f"{raw:.2f} ± " in lines[2]


def test_an_empty_continuation_makes_the_item_malformed_not_a_crash(lm, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"q": "The king", "choices": ["said", ""], "gold": 0}) + "\n")
    task = {
        "task": "t",
        "data": str(data),
        "output_type": "multiple_choice",
        "doc_to_text": "{{ q }}",
        "doc_to_choice": "choices",
        "doc_to_target": "{{ gold }}",
        "target_delimiter": "",
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(task))
    result = evaluate_tasks(lm, tasks=[tmp_path / "t.yaml"])["results"]["t"]
    assert result["n"] == 0
    assert "t row 0 choice 1: empty continuation" in result["malformed"]["records"][0]["reason"]


def test_generation_task_with_stop_strings_and_judges(lm, tmp_path):
    data = tmp_path / "g.jsonl"
    rows = [
        {"prompt": "The king said", "answer": "that the queen"},
        {"prompt": "Hello", "answer": "world"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    task = {
        "task": "gen",
        "data": str(data),
        "output_type": "generate_until",
        "doc_to_text": "{{ prompt }}",
        "doc_to_target": "answer",
        "generation": {"until": ["."], "max_gen_toks": 6},
        "metrics": ["exact_match", "f1", "bleu", "chrf", "rouge_l"],
    }
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(task))
    judge = LoglikJudge(lm, name="self")
    out = evaluate_tasks(lm, tasks=[tmp_path / "gen.yaml"], judges=[judge], log_samples=True)[
        "results"
    ]["gen"]
    assert out["n"] == 2
    for sample in out["samples"]:
        assert "." not in sample["completion"]
        expected = judge.score([sample["context"]], [sample["completion"]])[0]
        assert sample["judge_self"] == expected
    assert set(out["metrics"]) == {"exact_match", "f1", "bleu", "chrf", "rouge_l", "judge_self"}


def test_loglik_judges_score_by_hand(lm):
    prompts, completions = ["The king said"], [" that the queen"]
    [mean] = LoglikJudge(lm).score(prompts, completions)
    [score] = loglikelihood(lm, [Request(prompts[0], completions[0])])
    assert mean == pytest.approx(score.logprob / score.tokens)
    [p_yes] = LoglikJudge(lm, mode="yes_probability").score(prompts, completions)
    assert p_yes is not None and 0.0 < p_yes < 1.0
    assert LoglikJudge(lm).score(["The king"], [""]) == [None]  # nothing to average


def test_classifier_judge_reports_the_positive_logit(tmp_path, tok):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
    )
    cfg.id2label, cfg.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    model = GPT2ForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "model_max_length": 64,
            }
        )
    )
    judge = ClassifierJudge(tmp_path)
    scores = judge.score(["The king said", "Hello"], [" that the queen would come", " world"])
    for text, score in zip(
        ["The king said that the queen would come", "Hello world"], scores, strict=True
    ):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 1].item()
        assert score == pytest.approx(expected, abs=1e-4)


def test_checkpoint_and_its_hf_export_score_alike(tmp_path, tok, quiz):
    model = tiny_gpt(tok.get_vocab_size(), bias=True)
    save_checkpoint(
        tmp_path / "ckpt", model=model, config=model.config, optimizer=None, trainer_state={}
    )
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    ours = load_eval_model(tmp_path / "ckpt", tmp_path / "tokenizer.json")
    hf_dir = export_hf(
        model, tmp_path / "hf", tmp_path / "tokenizer.json", eos_id=tok.token_to_id("<|endoftext|>")
    )
    theirs = load_eval_model(hf_dir)
    a = evaluate_tasks(ours, tasks=[quiz], log_samples=True)["results"]["quiz"]["samples"]
    b = evaluate_tasks(theirs, tasks=[quiz], log_samples=True)["results"]["quiz"]["samples"]
    for x, y in zip(a, b, strict=True):
        assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], abs=1e-3)


def test_a_path_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a model"):
        load_eval_model(tmp_path)


def test_builtin_tasks_run_on_slices_of_the_shared_data(tok):
    needs_data("eval/arc/arc_easy_test.jsonl", "eval/hellaswag/hellaswag_val.jsonl.gz", "blimp")
    # a 400-token vocabulary spells some endings in more than 32 tokens: a longer context
    lm = LlmforgeModel(tiny_gpt(tok.get_vocab_size(), block_size=256), tok)
    tasks = ["arc_easy", "arc_challenge", "hellaswag", "blimp_adjunct_island"]
    out = evaluate_tasks(lm, tasks=tasks, limit=6, log_samples=True)
    for name in tasks:
        result = out["results"][name]
        assert result["n"] == 6 and result["malformed"]["count"] == 0
        assert 0.0 <= result["metrics"]["acc"]["value"] <= 1.0
    arc = out["results"]["arc_easy"]["samples"][0]
    assert arc["context"].startswith("Question: ") and arc["context"].endswith("\nAnswer:")
    blimp = out["results"]["blimp_adjunct_island"]["samples"][0]
    assert blimp["context"] == "" and blimp["gold"] == [0]
    hella = out["results"]["hellaswag"]["samples"][0]
    assert hella["context"] == "Roof shingle removal: A man is sitting on a roof. he"


def test_builtin_perplexity_task_on_one_article(lm):
    needs_data("text/wikitext2_tokens/wiki2_test.txt.gz")
    result = evaluate_tasks(lm, tasks=["wikitext2"], limit=1, log_samples=True)["results"][
        "wikitext2"
    ]
    sample = result["samples"][0]
    bpb = -sample["loglikelihood"] / sample["bytes"] / math.log(2)
    assert result["metrics"]["bits_per_byte"]["value"] == pytest.approx(bpb)
    assert result["metrics"]["byte_perplexity"]["value"] == pytest.approx(2**bpb)


def test_a_group_scores_the_unweighted_mean_of_its_subtasks(lm, quiz, tmp_path):
    task = yaml.safe_load(quiz.read_text())
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(quiz.with_suffix(".jsonl").read_text().splitlines()[:2]))
    defaults = {k: v for k, v in task.items() if k not in ("task", "data")}
    group = {
        "group": "quizzes",
        "defaults": defaults,
        "subtasks": [{"task": "long", "data": task["data"]}, {"task": "short", "data": str(short)}],
    }
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(group))
    out = evaluate_tasks(lm, tasks=[tmp_path / "group.yaml"])
    long, brief = (
        out["results"]["long"]["metrics"]["acc"],
        out["results"]["short"]["metrics"]["acc"],
    )
    entry = out["groups"]["quizzes"]["metrics"]["acc"]
    assert entry["value"] == pytest.approx((long["value"] + brief["value"]) / 2)
    assert entry["stderr"] == pytest.approx(math.hypot(long["stderr"], brief["stderr"]) / 2)
    header = leaderboard_markdown({"m": out}).splitlines()[0]
    assert header == "| Model | Average (normalised) | quizzes acc_norm | quizzes normalised |"

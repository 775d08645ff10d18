"""The request types beyond multiple choice, perplexity and plain generation, as lm-eval runs
them: loglikelihood (LAMBADA), one context per choice (WinoGrande), lettered choices with a
description and first-n few-shot (MMLU), generation with filters and repeats (GSM8K), and
size-weighted group aggregates. Expected prompts are written out by hand; expected scores are
computed by hand from the model's logits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm.eval.filters import FilterSpec, FilterStep, apply_filter
from llm.eval.metrics import exact_match_lm_eval
from llm.eval.runner import _group_results, evaluate_tasks
from llm.eval.task import LoadedTask
from llm.eval.task_config import TaskError, parse_file, parse_task
from ray_jobs.evaluate import task_metrics
from tests.llm.eval.test_loglik import by_hand, ids


def write(tmp_path: Path, name: str, rows: list[dict[str, Any]], task: dict[str, Any]) -> Path:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"task": name, "data": str(data), **task}))
    return path


def scored(lm, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's split of (context, continuation) into tokens, then the logits by hand."""
    stripped = context.rstrip()
    cont = context[len(stripped) :] + continuation
    ctx_ids = ids(lm, stripped)
    whole = ids(lm, stripped + cont)
    return by_hand(lm, ctx_ids, whole[len(ctx_ids) :])


# ---- loglikelihood (LAMBADA) -------------------------------------------------------------

SENTENCES = [
    "The king said that the queen would come to the castle",
    "Hello world, the world is wide",
    "A man is sitting on a roof",
    "the sea is deep",
]
LAMBADA = {
    "output_type": "loglikelihood",
    "doc_to_text": "{{ text.split(' ')[:-1] | join(' ') }}",
    "doc_to_target": "{{ ' ' + text.split(' ')[-1] }}",
}


def test_loglikelihood_scores_the_last_word_greedy_acc_and_perplexity(lm, tmp_path):
    path = write(tmp_path, "lastword", [{"text": s} for s in SENTENCES], LAMBADA)
    result = evaluate_tasks(lm, tasks=[path], log_samples=True)["results"]["lastword"]
    assert result["n"] == 4
    lls, greedy = [], []
    for sentence, sample in zip(SENTENCES, result["samples"], strict=True):
        context, word = sentence.rsplit(" ", 1)
        assert (sample["context"], sample["target"]) == (context, " " + word)
        ll, is_greedy = scored(lm, context, " " + word)
        assert sample["loglikelihood"] == pytest.approx(ll, abs=1e-4)
        lls.append(ll)
        greedy.append(is_greedy)
    metrics = result["metrics"]
    assert metrics["acc"]["value"] == pytest.approx(sum(greedy) / 4)
    assert metrics["perplexity"]["value"] == pytest.approx(math.exp(-sum(lls) / 4), rel=1e-4)


def test_loglikelihood_fewshot_prompt_and_description(lm, tmp_path):
    # lm-eval: description + (text + target_delimiter + target + fewshot_delimiter) per example;
    # the target keeps its own leading space, so the default delimiter doubles it
    task = {**LAMBADA, "description": "Last words.\n", "fewshot_config": {"sampler": "first_n"}}
    path = write(tmp_path, "lastword", [{"text": s} for s in SENTENCES], task)
    items, _ = LoadedTask.load(parse_file(path)).items(num_fewshot=2)  # type: ignore[arg-type]
    assert items[0].context == (
        "Last words.\n"
        "Hello world, the world is  wide\n\n"
        "A man is sitting on a  roof\n\n"
        "The king said that the queen would come to the"
    )
    assert items[2].context.startswith("Last words.\nThe king said that the queen would come")


# ---- one context per choice (WinoGrande) -------------------------------------------------

WINO = [
    {"sentence": "The king said that _ would come.", "option1": "the queen", "option2": "the sea",
     "answer": "1"},
    {"sentence": "A man is sitting on _ of the house.", "option1": "the world",
     "option2": "the roof", "answer": "2"},
    {"sentence": "Hello world, _ is wide.", "option1": "the world", "option2": "a man",
     "answer": "1"},
]  # fmt: skip
WINOGRANDE = {
    "output_type": "multiple_choice",
    "doc_to_text": "{{ {'1': 0, '2': 1}[answer] }}",
    "doc_to_choice": "{{ [sentence[:sentence.index('_')] + option1, "
    "sentence[:sentence.index('_')] + option2] }}",
    "doc_to_target": "{{ sentence[sentence.index('_') + 1:].strip() }}",
    "metrics": ["acc", "acc_norm"],
}


def test_one_context_per_choice_scores_the_shared_continuation(lm, tmp_path):
    path = write(tmp_path, "wino", WINO, WINOGRANDE)
    result = evaluate_tasks(lm, tasks=[path], log_samples=True)["results"]["wino"]
    first = result["samples"][0]
    assert first["contexts"] == ["The king said that the queen", "The king said that the sea"]
    assert first["gold"] == [0]
    accs, norms = [], []
    for doc, sample in zip(WINO, result["samples"], strict=True):
        prefix = doc["sentence"][: doc["sentence"].index("_")]
        rest = " " + doc["sentence"][doc["sentence"].index("_") + 1 :].strip()
        options = [prefix + doc["option1"], prefix + doc["option2"]]
        lls = [scored(lm, option, rest)[0] for option in options]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        gold = int(doc["answer"]) - 1
        accs.append(float(lls.index(max(lls)) == gold))
        # lm-eval normalises by the length of each choice, here the partial contexts
        per_char = [ll / len(o) for ll, o in zip(lls, options, strict=True)]
        norms.append(float(per_char.index(max(per_char)) == gold))
    assert result["metrics"]["acc"]["value"] == pytest.approx(sum(accs) / 3)
    assert result["metrics"]["acc_norm"]["value"] == pytest.approx(sum(norms) / 3)


def test_one_context_per_choice_fewshot_uses_the_correct_context(lm, tmp_path):
    task = {**WINOGRANDE, "fewshot_config": {"sampler": "first_n"}}
    path = write(tmp_path, "wino", WINO, task)
    items, _ = LoadedTask.load(parse_file(path)).items(num_fewshot=1)  # type: ignore[arg-type]
    # the example: its correct context, " ", the continuation, "\n\n"; then each option
    example = "A man is sitting on the roof of the house.\n\n"
    assert items[0].contexts == (example + "The king said that the queen",
                                 example + "The king said that the sea")  # fmt: skip


# ---- lettered choices, description, first-n few-shot (MMLU) ------------------------------

MMLU = {
    "output_type": "multiple_choice",
    "description": "The following are questions about {{ subject }}.\n\n",
    "doc_to_text": "{{ question.strip() }}\nA. {{ choices[0] }}\nB. {{ choices[1] }}\nAnswer:",
    "doc_to_choice": ["A", "B"],
    "doc_to_target": "answer",
    "fewshot_config": {"sampler": "first_n"},
    "num_fewshot": 2,
    "metrics": ["acc"],
}
MMLU_DEV = [
    {"subject": "seas", "question": "Which is deep?", "choices": ["the sea", "the roof"],
     "answer": 0},
    {"subject": "seas", "question": "What is wide?", "choices": ["a man", "the world"],
     "answer": 1},
    {"subject": "seas", "question": "Unused?", "choices": ["x", "y"], "answer": 0},
]  # fmt: skip
MMLU_TEST = [
    {"subject": "kings", "question": " Who would come? ", "choices": ["the queen", "the sea"],
     "answer": 0},
    {"subject": "roofs", "question": "Where is he?", "choices": ["the sun", "a roof"],
     "answer": 1},
]  # fmt: skip


def test_lettered_choices_with_description_and_first_n_fewshot(lm, tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in MMLU_DEV))
    path = write(tmp_path, "mmlu_mini", MMLU_TEST, {**MMLU, "fewshot_data": str(dev)})
    result = evaluate_tasks(lm, tasks=[path], log_samples=True)["results"]["mmlu_mini"]
    shots = (
        "Which is deep?\nA. the sea\nB. the roof\nAnswer: A\n\n"
        "What is wide?\nA. a man\nB. the world\nAnswer: B\n\n"
    )
    contexts = [
        "The following are questions about kings.\n\n"
        + shots
        + "Who would come?\nA. the queen\nB. the sea\nAnswer:",
        "The following are questions about roofs.\n\n"
        + shots
        + "Where is he?\nA. the sun\nB. a roof\nAnswer:",
    ]
    accs = []
    for context, doc, sample in zip(contexts, MMLU_TEST, result["samples"], strict=True):
        assert sample["context"] == context
        lls = [scored(lm, context, " A")[0], scored(lm, context, " B")[0]]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        accs.append(float(lls.index(max(lls)) == doc["answer"]))
    assert result["metrics"]["acc"]["value"] == pytest.approx(sum(accs) / 2)
    assert result["fewshot_pool"] == 3


# ---- filters (GSM8K) on planted generations ----------------------------------------------

STRICT = FilterSpec(
    "strict-match",
    (FilterStep("regex", (("regex_pattern", r"#### (\-?[0-9\.\,]+)"),)), FilterStep("take_first")),
)
FLEXIBLE = FilterSpec(
    "flexible-extract",
    (
        FilterStep(
            "regex", (("group_select", -1), ("regex_pattern", r"(-?[$0-9.,]{2,})|(-?[0-9]+)"))
        ),
        FilterStep("take_first"),
    ),
)
MAJORITY = FilterSpec(
    "maj",
    (
        FilterStep("regex", (("regex_pattern", r"The answer is (\-?[0-9\.\,]*[0-9]+)"),)),
        FilterStep("majority_vote"),
        FilterStep("take_first"),
    ),
)


def test_regex_filters_on_planted_generations():
    assert apply_filter(STRICT, ["3 + 4 = 7\n#### 7"]) == "7"
    assert apply_filter(STRICT, ["#### 1,200 then #### 5"]) == "1,200"  # the first match
    assert apply_filter(STRICT, ["the answer is 7"]) == "[invalid]"
    assert apply_filter(STRICT, ["no", "#### 9"]) == "[invalid]"  # take_first: first response
    # the last match; of a tuple match its first non-empty group, stripped
    assert apply_filter(FLEXIBLE, ["5 apples and $12.50, so 8"]) == "8"
    assert apply_filter(FLEXIBLE, ["costs $12.50 in all"]) == "$12.50"
    assert apply_filter(FLEXIBLE, ["none at all"]) == "[invalid]"
    custom = FilterSpec("c", (FilterStep("regex", (("fallback", "?"),)), FilterStep("take_first")))
    assert apply_filter(custom, ["nothing"]) == "?"


def test_majority_vote_over_repeats_ties_to_the_first_seen():
    planted = ["The answer is 3", "The answer is 4", "The answer is 4", "junk", "The answer is 3"]
    assert apply_filter(MAJORITY, planted) == "3"  # 3 and 4 twice each: 3 was seen first
    assert apply_filter(MAJORITY, planted[1:]) == "4"
    assert apply_filter(MAJORITY, ["junk", "x", "The answer is 2"]) == "[invalid]"
    first_two = FilterSpec("k", (FilterStep("take_first_k", (("k", 2),)), *MAJORITY.steps))
    assert apply_filter(first_two, ["The answer is 9", "The answer is 1", "The answer is 1"]) == "9"
    with pytest.raises(ValueError, match="take_first_k needs 2 responses"):
        apply_filter(first_two, ["The answer is 9"])


def test_exact_match_options_as_lm_eval():
    gsm = {"ignore_case": True, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}
    assert exact_match_lm_eval("1,200", ["Some reasoning\n#### 1200"], **gsm) == 1.0
    assert exact_match_lm_eval("$5.", ["#### 5"], **gsm) == 1.0
    assert exact_match_lm_eval(" 5", ["#### 5"], **gsm) == 0.0  # no stripping
    assert exact_match_lm_eval("Paris!", ["paris"], ignore_case=True) == 0.0
    assert (
        exact_match_lm_eval("Paris!", ["paris"], ignore_case=True, ignore_punctuation=True) == 1.0
    )
    assert exact_match_lm_eval("a1b2", ["ab"], ignore_numbers=True) == 1.0
    assert exact_match_lm_eval("x", ["y", "x"]) == 1.0


GSM_TASK = {
    "output_type": "generate_until",
    "doc_to_text": "Question: {{ question }}\nAnswer:",
    "doc_to_target": "{{ answer }}",
    "generation": {"until": ["\n\n", "Question:"], "max_gen_toks": 8},
    "metric_list": [
        {
            "metric": "exact_match",
            "aggregation": "mean",
            "higher_is_better": True,
            "ignore_case": True,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }
    ],
    "filter_list": [
        {"name": "strict-match", "filter": [{"function": "regex"}, {"function": "take_first"}]},
        {
            "name": "flexible-extract",
            "filter": [
                {"function": "regex", "group_select": -1,
                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"},
            ],
        },
    ],
}  # fmt: skip
GSM = [
    {"question": "The king has 2 castles and 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "Is the sea deep?", "answer": "Yes.\n#### 1"},
]


def test_generation_with_filters_scores_each_filter_as_lm_eval(lm, tmp_path):
    path = write(tmp_path, "gsm_mini", GSM, GSM_TASK)
    result = evaluate_tasks(lm, tasks=[path], log_samples=True)["results"]["gsm_mini"]
    assert set(result["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    cfg = parse_file(path)
    assert not isinstance(cfg, type(None)) and hasattr(cfg, "filter_list")
    options = cfg.metric_options("exact_match")  # type: ignore[union-attr]
    for key, spec in (("strict-match", STRICT), ("flexible-extract", FLEXIBLE)):
        expected = []
        for doc, sample in zip(GSM, result["samples"], strict=True):
            answer = apply_filter(spec, [sample["completion"]])
            assert sample["filtered"][key] == answer
            expected.append(exact_match_lm_eval(answer, [doc["answer"]], **options))
        assert result["metrics"][f"exact_match,{key}"]["value"] == pytest.approx(sum(expected) / 2)
    # the headline figure the evaluate job reports for the task is the first filter's metric
    assert result["primary_metric"] == "exact_match,strict-match"
    value = result["metrics"]["exact_match,strict-match"]["value"]
    figures = task_metrics({"results": {"gsm_mini": result}, "groups": {}})
    assert figures == {"gsm_mini/exact_match,strict-match": value}


def test_sampled_repeats_give_each_item_its_responses(lm, tmp_path):
    task = {
        **GSM_TASK,
        "repeats": 4,
        "generation": {"until": ["\n\n"], "max_gen_toks": 4, "temperature": 1.0, "seed": 7},
        "filter_list": [
            {"name": "maj", "filter": [{"function": "majority_vote"}, {"function": "take_first"}]}
        ],
    }
    path = write(tmp_path, "gsm_rep", GSM, task)
    result = evaluate_tasks(lm, tasks=[path], log_samples=True)["results"]["gsm_rep"]
    for sample in result["samples"]:
        assert len(sample["responses"]) == 4
        votes = {r: sample["responses"].count(r) for r in sample["responses"]}
        top = max(votes.values())
        assert sample["filtered"]["maj"] == next(r for r in sample["responses"] if votes[r] == top)


# ---- groups with size-weighted aggregates ------------------------------------------------


def _result(acc: float, stderr: float, n: int, aggregate: list[list[Any]]) -> dict[str, Any]:
    return {
        "n": n,
        "group_aggregate": aggregate,
        "metrics": {"acc": {"value": acc, "stderr": stderr}, "acc_norm": {"value": 0.0,
                                                                          "stderr": 0.0}},
        "normalised": {},
    }  # fmt: skip


def test_group_aggregates_weighted_by_size_as_lm_eval():
    spec = [["acc", True]]
    results = {"a": _result(0.5, 0.2, 4, spec), "b": _result(1.0, 0.1, 2, spec)}
    group = _group_results(results, {"g": ["a", "b"]})["g"]
    assert group["metrics"]["acc"]["value"] == pytest.approx((0.5 * 4 + 1.0 * 2) / 6)
    # lm-eval's pooled_sample_stderr: sqrt(sum((n-1) n se^2) / (N - k) / N)
    pooled = (3 * 4 * 0.04 + 1 * 2 * 0.01) / (6 - 2)
    assert group["metrics"]["acc"]["stderr"] == pytest.approx(math.sqrt(pooled / 6))
    assert set(group["metrics"]) == {"acc"}  # only the listed metrics
    unweighted = {k: {**r, "group_aggregate": [["acc", False]]} for k, r in results.items()}
    group = _group_results(unweighted, {"g": ["a", "b"]})["g"]
    assert group["metrics"]["acc"]["value"] == pytest.approx(0.75)
    assert group["metrics"]["acc"]["stderr"] == pytest.approx(math.sqrt(0.05) / 2)


def test_a_group_file_weights_its_subtasks_by_item_count(lm, tmp_path):
    data = tmp_path / "lastword.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    group = {
        "group": "lastwords",
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "defaults": {**LAMBADA, "data": str(data)},
        "subtasks": [{"task": "first3", "data": str(data)}, {"task": "all4"}],
    }
    path = tmp_path / "group.yaml"
    path.write_text(yaml.safe_dump(group))
    three = tmp_path / "three.jsonl"
    three.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[:3]))
    group["subtasks"][0]["data"] = str(three)  # type: ignore[index]
    path.write_text(yaml.safe_dump(group))
    out = evaluate_tasks(lm, tasks=[path])
    a, b = out["results"]["first3"], out["results"]["all4"]
    acc = (a["metrics"]["acc"]["value"] * 3 + b["metrics"]["acc"]["value"] * 4) / 7
    assert out["groups"]["lastwords"]["metrics"]["acc"]["value"] == pytest.approx(acc)
    assert set(out["groups"]["lastwords"]["metrics"]) == {"acc"}


# ---- task-file errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"filter_list": [{"name": "x", "filter": [{"function": "nope"}]}]}, "function must be"),
        ({"filter_list": [{"name": "x", "filter": [{"function": "regex"}]}]}, "take_first"),
        (
            {"filter_list": [{"name": "x", "filter": [{"function": "regex", "regex_pattern": "("},
                                                      {"function": "take_first"}]}]},
            "does not compile",
        ),
        ({"repeats": 3, "filter_list": None}, "repeats > 1 needs a filter_list"),
        ({"fewshot_config": {"sampler": "balanced"}}, "sampler must be one of"),
        ({"metric_list": [{"metric": "exact_match", "ignore_spaces": True}]}, "takes no options"),
    ],
)  # fmt: skip
def test_task_file_errors_name_file_task_and_field(extra, message):
    d = {"task": "t", "data": "x.jsonl", **GSM_TASK, **extra}
    if "metric_list" in extra:
        d["metric_list"] = extra["metric_list"]
    with pytest.raises(TaskError, match=message) as info:
        parse_task(d, "tasks/t.yaml")
    assert str(info.value).startswith("tasks/t.yaml (task t)")


def test_filters_belong_to_generation_and_groups_name_bad_aggregates(tmp_path):
    with pytest.raises(TaskError, match="'filter_list' applies to generate_until"):
        parse_task(
            {"task": "t", "data": "x", **LAMBADA, "filter_list": GSM_TASK["filter_list"]}, "f.yaml"
        )
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "group": "g",
                "aggregate_metric_list": [{"metric": "acc", "weight_by_size": "yes"}],
                "subtasks": [{"task": "t", "data": "x", **LAMBADA}],
            }
        )
    )
    with pytest.raises(TaskError, match=r"g\.yaml \(group g\): field 'aggregate_metric_list'"):
        parse_file(path)


def test_builtin_tasks_of_each_new_request_type_run_end_to_end(lm, shared_data):
    """The built-in task files for loglikelihood, lettered choices and filtered generation run
    on a model and report their metrics, each with its headline metric."""
    out = evaluate_tasks(lm, tasks=["lambada_austen", "arc_easy_mmlu", "arc_easy_gen"], limit=3)
    results = out["results"]
    assert set(results["lambada_austen"]["metrics"]) == {"acc", "perplexity"}
    assert results["lambada_austen"]["metrics"]["perplexity"]["value"] > 1
    assert results["arc_easy_mmlu"]["primary_metric"] == "acc"
    gen = results["arc_easy_gen"]
    assert set(gen["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(r["n"] == 3 for r in results.values())
    assert set(task_metrics(out)) == {
        "lambada_austen/acc",
        "arc_easy_mmlu/acc",
        "arc_easy_gen/exact_match,strict-match",
    }


# ---- built-in multi-context task: BLiMP's two-prefix method --------------------------------


def test_builtin_blimp_two_prefix_scores_the_shared_word_after_each_prefix(lm, shared_data):
    """blimp_two_prefix: the paradigms flagged two_prefix_method, each item the good and the bad
    prefix as contexts and the word they share as the continuation; acc by hand from the
    logits, and the group as the unweighted mean of its paradigms."""
    import gzip

    from llm.eval.task_config import resolve_tasks

    tasks, groups = resolve_tasks(["blimp_two_prefix"])
    flagged = []
    for path in sorted((shared_data / "blimp").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            if json.loads(f.readline())["two_prefix_method"]:
                flagged.append("blimp_two_prefix_" + path.name.removesuffix(".jsonl.gz"))
    assert sorted(groups["blimp_two_prefix"]) == flagged and len(flagged) == 20
    assert sorted(t.task for t in tasks) == flagged

    paradigm = "blimp_two_prefix_determiner_noun_agreement_2"
    run = evaluate_tasks(lm, tasks=["blimp_two_prefix"], limit=4, log_samples=True)
    out = run["results"]
    with gzip.open(shared_data / "blimp/determiner_noun_agreement_2.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(4)]
    result = out[paradigm]
    accs = []
    for row, sample in zip(rows, result["samples"], strict=True):
        prefixes = [row["two_prefix_prefix_good"], row["two_prefix_prefix_bad"]]
        assert sample["contexts"] == prefixes and sample["gold"] == [0]
        lls = [scored(lm, p, " " + row["two_prefix_word"])[0] for p in prefixes]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        accs.append(float(lls[0] > lls[1]))
    assert result["metrics"]["acc"]["value"] == pytest.approx(sum(accs) / 4)
    means = [out[t]["metrics"]["acc"]["value"] for t in flagged]
    group = run["groups"]["blimp_two_prefix"]
    assert group["metrics"]["acc"]["value"] == pytest.approx(sum(means) / 20)

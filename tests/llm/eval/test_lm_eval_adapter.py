"""The llmforge model type inside lm-evaluation-harness (skipped without lm_eval installed)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from llm.eval.lm_eval_adapter import LlmforgeLM
from llm.eval.loglik import Request, loglikelihood, loglikelihood_rolling

PAIRS = [
    ("The king said", " that the queen"),
    ("Hello world, the world is", " wide"),
    ("", " The sea"),
]


def instance(kind: str, args: tuple, i: int) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", i, 1))


def test_llmforge_is_registered_and_scores_like_the_harness(lm):
    assert get_model("llmforge") is LlmforgeLM
    adapter = LlmforgeLM(model=lm, batch_size="4")
    got = adapter.loglikelihood([instance("loglikelihood", p, i) for i, p in enumerate(PAIRS)])
    ours = loglikelihood(lm, [Request(*p) for p in PAIRS])
    assert got == [(s.logprob, s.is_greedy) for s in ours]
    text = "The king said that the queen would come to the castle in the morning. " * 3
    rolling = adapter.loglikelihood_rolling([instance("loglikelihood_rolling", (text,), 0)])
    assert rolling == loglikelihood_rolling(lm, [text])
    [out] = adapter.generate_until(
        [instance("generate_until", ("The king", {"until": ["."], "max_gen_toks": 5}), 0)]
    )
    assert isinstance(out, str) and "." not in out


def test_simple_evaluate_runs_a_custom_task_on_llmforge(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = [{"q": "The king said", "choices": ["that", "sea"], "gold": 0}] * 3
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.yaml").write_text(
        "task: llmforge_smoke\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'd.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: choices\ndoc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n"
    )
    out = simple_evaluate(
        model=LlmforgeLM(model=lm),
        tasks=["llmforge_smoke"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=False,
    )
    assert out is not None
    [score] = loglikelihood(lm, [Request("The king said", " that")])
    [other] = loglikelihood(lm, [Request("The king said", " sea")])
    assert out["results"]["llmforge_smoke"]["acc,none"] == float(score.logprob > other.logprob)

"""Auxiliary-model judges: score open-ended completions with another model.

Two kinds:
- ``LoglikJudge``, any evaluation model (an llmforge checkpoint or a Hugging Face causal LM):
  either the mean per-token log-likelihood of the completion after a judge prompt, or the
  probability of " Yes" against " No" after a question about the completion.
- ``ClassifierJudge``, a Hugging Face sequence-classification or reward model folder: the
  logit of the positive label (the single logit of a reward head).

Scores are reported like any metric (mean and standard error, "judge_<name>").
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llm.eval.lm import EvalModel
from llm.eval.loglik import Request, encode_or_explain
from llm.eval.scoring import TokenRequest, score_tokens
from llm.eval.templates import ENV

MEAN_LOGPROB = "mean_logprob"
YES_PROBABILITY = "yes_probability"
DEFAULT_TEMPLATES = {
    MEAN_LOGPROB: "{{ prompt }}",
    YES_PROBABILITY: (
        "Question: {{ prompt }}\nAnswer: {{ completion }}\n"
        "Is this answer correct and helpful? Reply Yes or No.\nReply:"
    ),
}
POSITIVE_NAMES = ("positive", "pos", "yes", "acceptable", "good", "correct")


class Judge(ABC):
    name: str

    @abstractmethod
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float | None]:
        """One score per (prompt, completion); None where the judge cannot score it."""


class LoglikJudge(Judge):
    def __init__(
        self,
        model: EvalModel,
        *,
        mode: str = MEAN_LOGPROB,
        template: str | None = None,
        name: str = "loglik",
        batch_size: int = 32,
    ) -> None:
        if mode not in DEFAULT_TEMPLATES:
            raise ValueError(f"judge mode must be one of {list(DEFAULT_TEMPLATES)}, got {mode!r}")
        self.model, self.mode, self.name, self.batch_size = model, mode, name, batch_size
        self.template = ENV.from_string(template or DEFAULT_TEMPLATES[mode])

    def _contexts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        return [
            self.template.render(prompt=p, completion=c)
            for p, c in zip(prompts, completions, strict=True)
        ]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float | None]:
        contexts = self._contexts(prompts, completions)
        if self.mode == YES_PROBABILITY:
            requests = [Request(c, v) for c in contexts for v in (" Yes", " No")]
        else:
            requests = [Request(c, x) for c, x in zip(contexts, completions, strict=True)]
        encoded = encode_or_explain(self.model, requests)
        usable = [e for e in encoded if isinstance(e, TokenRequest)]
        scores = iter(score_tokens(self.model, usable, batch_size=self.batch_size))
        results = [next(scores) if isinstance(e, TokenRequest) else None for e in encoded]
        if self.mode == MEAN_LOGPROB:
            # an empty completion has no tokens to average over: unscored, not zero
            return [None if s is None else s.logprob / s.tokens for s in results]
        out: list[float | None] = []
        for yes, no in zip(results[0::2], results[1::2], strict=True):
            if yes is None or no is None:
                out.append(None)
            else:  # P(Yes) / (P(Yes) + P(No)), computed stably
                out.append(1.0 / (1.0 + math.exp(no.logprob - yes.logprob)))
        return out


class ClassifierJudge(Judge):
    """A transformers sequence-classification (or single-logit reward) model folder."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        positive_label: str | int | None = None,
        template: str = "{{ prompt }}{{ completion }}",
        name: str | None = None,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"judge model folder {path} has no config.json")
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device)
        self.model.eval()
        self.tok = AutoTokenizer.from_pretrained(str(path))
        if self.tok.pad_token is None:  # batching needs a pad token; its id marks the end
            self.tok.pad_token = self.tok.eos_token or self.tok.convert_ids_to_tokens(0)
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.label = self._positive_index(positive_label)
        self.template = ENV.from_string(template)
        self.name = name or path.name
        self.batch_size, self.device = batch_size, device

    def _positive_index(self, wanted: str | int | None) -> int:
        labels: dict[int, str] = dict(self.model.config.id2label)
        if isinstance(wanted, int):
            if wanted not in labels:
                raise ValueError(f"positive_label {wanted} is not a label index of {labels}")
            return wanted
        if wanted is not None:
            found = [i for i, name in labels.items() if name == wanted]
            if not found:
                raise ValueError(f"positive_label {wanted!r} is not among {labels}")
            return found[0]
        if len(labels) == 1:
            return 0
        named = [i for i, n in labels.items() if str(n).lower() in POSITIVE_NAMES]
        if named:
            return named[0]
        if len(labels) == 2:
            return 1  # LABEL_0 / LABEL_1: the usual negative / positive order
        raise ValueError(f"cannot tell the positive label among {labels}; pass positive_label")

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float | None]:
        texts = [
            self.template.render(prompt=p, completion=c)
            for p, c in zip(prompts, completions, strict=True)
        ]
        out: list[float | None] = []
        for start in range(0, len(texts), self.batch_size):
            batch: Any = self.tok(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits
            out.extend(float(x) for x in logits[:, self.label])
        return out

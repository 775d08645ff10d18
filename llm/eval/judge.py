"""Auxiliary-model judges: score open-ended completions with another model.

Three kinds:
- ``LoglikJudge``, any evaluation model (an llmforge checkpoint or a Hugging Face causal LM):
  either the mean per-token log-likelihood of the completion after a judge prompt, or the
  probability of " Yes" against " No" after a question about the completion.
- ``ClassifierJudge``, a Hugging Face sequence-classification or reward model folder: the
  logit of the positive label (the single logit of a reward head).
- ``LlmforgeClassifierJudge``, an llmforge classifier checkpoint (``llm.finetune.classify``):
  the probability it gives the labels that count as good.

``load_judge`` builds one from what a spec names (a model folder, which labels are good, …).
Scores are reported like any metric (mean and standard error, "judge_<name>").
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm import storage
from llm.eval.lm import EvalModel, load_eval_model
from llm.eval.loglik import Request, encode_or_explain
from llm.eval.scoring import TokenRequest, score_tokens
from llm.finetune.classify import load_classifier, predict_proba
from llm.tokenizer.bpe import load_tokenizer
from llm.train.checkpoint import STATE_FILE, latest_checkpoint

MEAN_LOGPROB = "mean_logprob"
YES_PROBABILITY = "yes_probability"
DEFAULT_TEMPLATES = {
    MEAN_LOGPROB: "{{ prompt }}",
    YES_PROBABILITY: (
        "Question: {{ prompt }}\nAnswer: {{ completion }}\n"
        "Is this answer correct and helpful? Reply Yes or No.\nReply:"
    ),
}
TOKENIZER_FILE = "tokenizer.json"
POSITIVE_NAMES = ("positive", "pos", "yes", "acceptable", "good", "correct")
# a judge's template may come from a job spec: rendered sandboxed, it cannot reach Python
# internals through attributes of its two strings
TEMPLATES = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)


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
        self.template = TEMPLATES.from_string(template or DEFAULT_TEMPLATES[mode])

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
        self.template = TEMPLATES.from_string(template)
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


class LlmforgeClassifierJudge(Judge):
    """An llmforge classifier checkpoint: the summed probability of the good labels."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tokenizer: str | os.PathLike[str] | None = None,
        good: Sequence[str] = (),
        template: str = "{{ prompt }}{{ completion }}",
        name: str | None = None,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        path = Path(path)
        self.model, info = load_classifier(path, device)
        tokenizer = tokenizer or tokenizer_near(str(path))
        if tokenizer is None:
            raise ValueError(f"no {TOKENIZER_FILE} beside {path} or above it: give the tokenizer")
        self.tok = load_tokenizer(tokenizer)
        if self.tok.get_vocab_size() != self.model.config.vocab_size:
            raise ValueError(
                f"judge tokenizer has {self.tok.get_vocab_size()} tokens, but the classifier "
                f"{path} has vocab_size {self.model.config.vocab_size}"
            )
        self.labels = info.labels
        self.good = good_labels(info.labels, good, path)
        self.template = TEMPLATES.from_string(template)
        self.name = name or path.name
        self.batch_size = batch_size

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float | None]:
        texts = [
            self.template.render(prompt=p, completion=c)
            for p, c in zip(prompts, completions, strict=True)
        ]
        probs = predict_proba(self.model, self.tok, texts, batch_size=self.batch_size)
        good = probs[:, [self.labels.index(label) for label in self.good]].sum(-1)
        return [float(x) for x in good]


def good_labels(labels: Sequence[str], wanted: Sequence[str], where: object) -> tuple[str, ...]:
    """The labels that count as good: those wanted (each one of labels), else the labels named
    like "positive" or "good"; a clear error when neither tells."""
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise ValueError(f"judge labels {unknown} are not labels of {where}: {list(labels)}")
    if wanted:
        return tuple(dict.fromkeys(wanted))
    named = tuple(label for label in labels if label.lower() in POSITIVE_NAMES)
    if not named:
        raise ValueError(
            f"cannot tell which labels of {where} count as good among {list(labels)}; give them"
        )
    return named


def tokenizer_near(checkpoint: str) -> str | None:
    """The tokenizer.json (path or URI) in the checkpoint folder or the two above it (a
    fine-tune job's output keeps one at its top, its checkpoints in checkpoints/step_N)."""
    folder = checkpoint.rstrip("/")
    for _ in range(3):
        if storage.is_file(storage.join(folder, TOKENIZER_FILE)):
            return storage.join(folder, TOKENIZER_FILE)
        folder = folder.rsplit("/", 1)[0]
    return None


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The model folder a judge path names: a folder with config.json, else the latest
    checkpoint of a train or fine-tune output folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"judge model {path}: neither a model folder nor a job output")
    return found


def load_judge(
    model: str | os.PathLike[str],
    *,
    kind: str = "classifier",
    tokenizer: str | os.PathLike[str] | None = None,
    labels: Sequence[str] = (),
    mode: str | None = None,
    template: str | None = None,
    name: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> Judge:
    """The judge a spec names. kind "classifier": an llmforge classifier checkpoint (or a
    classification fine-tune's output) scores the probability of ``labels`` (default: those
    named like "good" or "positive"); a Hugging Face sequence-classification folder, the logit
    of its one positive label. kind "loglik": any evaluation model, by LoglikJudge's ``mode``."""
    name = name or Path(model).name
    if kind == "loglik":
        lm = load_eval_model(model, tokenizer, device)  # it finds a job output's tokenizer
        mode = mode or MEAN_LOGPROB
        return LoglikJudge(lm, mode=mode, template=template, name=name, batch_size=batch_size)
    if kind != "classifier":
        raise ValueError(f"judge kind must be 'classifier' or 'loglik', got {kind!r}")
    folder = model_folder(model)
    if (folder / STATE_FILE).is_file():  # an llmforge checkpoint
        return LlmforgeClassifierJudge(
            folder,
            tokenizer=tokenizer,
            good=labels,
            template=template or "{{ prompt }}{{ completion }}",
            name=name,
            batch_size=batch_size,
            device=device,
        )
    if len(labels) > 1:
        raise ValueError(
            f"{folder} is a Hugging Face classifier, judged by one label's logit: give one "
            f"label, not {list(labels)}"
        )
    return ClassifierJudge(
        folder,
        positive_label=labels[0] if labels else None,
        template=template or "{{ prompt }}{{ completion }}",
        name=name,
        batch_size=batch_size,
        device=device,
    )

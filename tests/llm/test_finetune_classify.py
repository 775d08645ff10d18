"""Classification fine-tuning on real text: a head on a tiny encoder (mean pooling) and on a
tiny decoder (last token) learns to tell Reuters news from Gutenberg books, through the same
Trainer as pretraining; the checkpoint comes back with the same logits; bad records are
counted and kept aside; and the trained classifier works as an evaluation judge."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokenizers
import torch

from llm.eval.judge import LlmforgeClassifierJudge, load_judge
from llm.finetune.classify import (
    accuracy_and_f1,
    classifier_info,
    evaluate_classifier,
    load_classifier,
    predict_proba,
    train_classifier,
)
from llm.finetune.classify_data import (
    ClassifyData,
    LabelOptions,
    assemble,
    fit_pair,
    label_order,
    pad_id,
    prepare_labelled,
)
from llm.finetune.config import finetune_config
from llm.model.classifier import SequenceClassifier
from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.tokenizer.bpe import EOS_TOKEN, PAD_TOKEN, save_tokenizer, train_bpe
from llm.train.checkpoint import latest_checkpoint, load_model, save_checkpoint
from tests.shared import DATA, require

NEWS = DATA / "text" / "reuters21578" / "reuters21578.jsonl.gz"
BOOKS = [
    DATA / "text" / "gutenberg_nltk" / f"{name}.txt"
    for name in ("austen-emma", "chesterton-thursday")
]
PER_LABEL, WORDS, BLOCK, STEPS = 240, 16, 40, 40
BAD_LINES = [
    "{not json",
    json.dumps(["a list", "news"]),
    json.dumps({"text": "", "label": "news"}),
    json.dumps({"text": "Shares of the company rose"}),
    json.dumps({"text": "It was a fine day", "label": 1.5}),
]


def news_snippets(n: int) -> list[str]:
    out = []
    with gzip.open(require(NEWS), "rt", encoding="utf-8") as f:
        for line in f:
            words = json.loads(line)["text"].split()
            if len(words) >= WORDS:
                out.append(" ".join(words[:WORDS]))
            if len(out) == n:
                return out
    raise AssertionError(f"{NEWS} has fewer than {n} texts of {WORDS} words")


def book_snippets(n: int) -> list[str]:
    out = []
    for book in BOOKS:
        # past the Project Gutenberg header, consecutive windows of the story itself
        words = require(book).read_text(encoding="utf-8").split()[3000:]
        wanted = n // len(BOOKS)
        out += [" ".join(words[i * WORDS : (i + 1) * WORDS]) for i in range(wanted)]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tokenizers.Tokenizer]:
    """A JSONL of news and book snippets (labels "news", "book"), interleaved, with a few bad
    records among them; and a BPE trained on the snippets."""
    news, books = news_snippets(PER_LABEL), book_snippets(PER_LABEL)
    rows = [
        json.dumps({"text": text, "label": label})
        for pair in zip(news, books, strict=True)
        for text, label in zip(pair, ("news", "book"), strict=True)
    ]
    folder = tmp_path_factory.mktemp("classify-data")
    path = folder / "snippets.jsonl"
    path.write_text("\n".join(rows[:10] + BAD_LINES + rows[10:]) + "\n")
    tok = train_bpe(news + books, vocab_size=600, special_tokens=(EOS_TOKEN, PAD_TOKEN))
    save_tokenizer(tok, folder / "tokenizer.json")
    return path, tok


@pytest.fixture(scope="module")
def data(corpus: tuple[Path, tokenizers.Tokenizer]) -> ClassifyData:
    path, tok = corpus
    return prepare_labelled(path, tok, block_size=BLOCK, options=LabelOptions(val_fraction=0.2))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Models this small train several times faster on one thread than on two threads that
    wait for each other (and for whatever else the machine runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def base_checkpoint(folder: Path, arch: str, vocab: int) -> Path:
    """A randomly initialised tiny model saved as an llmforge checkpoint."""
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, vocab_size=vocab, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32
    )
    model = build_model(config)
    return save_checkpoint(
        folder / "base", model=model, config=config, optimizer=None, trainer_state={}
    )


def test_records_become_labelled_examples_and_bad_ones_are_counted(
    data: ClassifyData, corpus: tuple[Path, tokenizers.Tokenizer]
) -> None:
    stats = data.stats
    assert stats["records"] == 2 * PER_LABEL + len(BAD_LINES)
    assert stats["kept"] == 2 * PER_LABEL and stats["rejected"] == len(BAD_LINES)
    assert stats["rejected_by_reason"] == {
        "invalid_json": 1,
        "wrong_type": 2,
        "empty_text": 1,
        "missing_label": 1,
    }
    assert [r.index for r in data.rejected] == [10, 11, 12, 13, 14]  # JSONL line numbers
    assert data.labels == ("book", "news") and stats["by_label"] == {"book": 240, "news": 240}
    assert len(data.train) + len(data.val) == 2 * PER_LABEL and len(data.val) == 96
    eos = corpus[1].token_to_id(EOS_TOKEN)
    assert all(data.train[i][0][-1] == eos for i in range(len(data.train)))


def test_labels_pairs_and_truncation(tmp_path: Path, corpus: tuple[Path, Any]) -> None:
    _, tok = corpus
    assert label_order(["10", "9", "b", "a", "9"]) == ("9", "10", "a", "b")
    assert fit_pair(list(range(10)), list(range(3)), 8) == (list(range(5)), list(range(3)))
    assert fit_pair(list(range(6)), list(range(6)), 8) == (list(range(4)), list(range(4)))
    eos = tok.token_to_id(EOS_TOKEN)
    ids, cut = assemble([5, 6, 7], [8, 9], tok, 16)
    assert ids == [5, 6, 7, eos, 8, 9, eos] and not cut
    assert assemble(list(range(20)), None, tok, 8) == ([*range(7), eos], True)
    path = tmp_path / "pairs.json"
    records = [
        {"premise": "It rains.", "hypothesis": "It is wet.", "gold": 1},
        {"premise": "It rains.", "hypothesis": "It is dry.", "gold": 0},
        {"premise": "It rains.", "gold": 0},
        {"premise": "It rains.", "hypothesis": "Sun.", "gold": 2},
    ]
    path.write_text(json.dumps(records))
    options = LabelOptions(
        text_field="premise", text_pair_field="hypothesis", label_field="gold", labels=("0", "1")
    )
    got = prepare_labelled(path, tok, block_size=BLOCK, options=options)
    assert got.stats["rejected_by_reason"] == {"missing_text_pair": 1, "unknown_label": 1}
    assert got.labels == ("0", "1") and got.stats["kept"] == 2


def test_metrics_match_their_definitions() -> None:
    gold, predicted = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    scores = accuracy_and_f1(gold, predicted, 3)
    # per-label F1: 1/2, 4/5, 0 (scikit-learn's f1_score(average="macro") gives the same)
    assert scores == pytest.approx({"accuracy": 0.6, "macro_f1": (0.5 + 0.8 + 0) / 3})


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.usefixtures("one_thread")
def test_a_classifier_learns_news_from_books_and_reloads_the_same(
    arch: str, data: ClassifyData, corpus: tuple[Path, tokenizers.Tokenizer], tmp_path: Path
) -> None:
    path, tok = corpus
    base = base_checkpoint(tmp_path, arch, tok.get_vocab_size())
    cfg = finetune_config(
        steps=STEPS, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_every=10,
        eval_every=STEPS, checkpoint_every=STEPS,
    )  # fmt: skip
    logged: dict[int, dict[str, float]] = {}
    summary = train_classifier(
        cfg,
        base,
        data,
        tmp_path / "out",
        pad=pad_id(tok),
        on_log=lambda s, m: logged.update({s: m}),
    )
    first, last = logged[0], logged[STEPS]
    assert 0.3 < first["val_accuracy"] < 0.7  # an untrained head: chance
    assert last["val_accuracy"] >= 0.9, last
    assert last["val_loss"] < 0.5 * first["val_loss"] and last["loss"] < logged[10]["loss"]
    assert summary["labels"] == ["book", "news"]

    checkpoint = latest_checkpoint(tmp_path / "out" / "checkpoints")
    assert checkpoint is not None
    info = classifier_info(checkpoint)
    pooling = "mean" if arch == "encoder" else "last"
    assert info is not None and (info.labels, info.pooling) == (("book", "news"), pooling)
    model, _ = load_classifier(checkpoint)
    again = evaluate_classifier(model, data.val, batch_size=7, pad=pad_id(tok))
    assert again["val_loss"] == pytest.approx(last["val_loss"], abs=1e-5)
    assert again["val_accuracy"] == last["val_accuracy"]
    with pytest.raises(ValueError, match=r"classifier's checkpoint.*load_classifier"):
        load_model(checkpoint)

    # as a judge: "news" is the good label, so news snippets score high and books low
    news, books = news_snippets(PER_LABEL + 20)[-20:], book_snippets(2 * PER_LABEL + 40)[-20:]
    judge = LlmforgeClassifierJudge(
        checkpoint, tokenizer=path.parent / "tokenizer.json", good=["news"]
    )
    on_news, on_books = (
        np.mean(judge.score([""] * 20, news)),
        np.mean(judge.score([""] * 20, books)),
    )
    assert on_news > 0.5 > on_books and on_news - on_books > 0.5, (on_news, on_books)


@pytest.mark.usefixtures("one_thread")
def test_a_resume_on_other_data_is_refused(
    data: ClassifyData, corpus: tuple[Path, tokenizers.Tokenizer], tmp_path: Path
) -> None:
    _, tok = corpus
    base = base_checkpoint(tmp_path, "encoder", tok.get_vocab_size())
    cfg = finetune_config(steps=2, batch_size=8, eval_every=2, checkpoint_every=2, warmup_steps=0)
    train_classifier(cfg, base, data, tmp_path / "out", pad=pad_id(tok))
    more = dataclasses.replace(cfg, steps=3)
    assert train_classifier(more, base, data, tmp_path / "out", pad=pad_id(tok))["steps"] == 3
    other = ClassifyData(data.val, data.train, data.labels, data.stats)
    with pytest.raises(ValueError, match="trained on other data"):
        train_classifier(more, base, other, tmp_path / "out", pad=pad_id(tok))


def test_pooling_and_padding() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        arch="encoder", vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    model = SequenceClassifier(build_model(config), 3).eval()
    assert not hasattr(model.backbone, "lm_head")  # the LM head is dropped
    ids = torch.tensor([[5, 6, 7, 8]])
    alone = model(ids, torch.ones_like(ids))
    padded = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 9, 0, 0, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[4], [2]])).long()
    # padding changes nothing: the encoder is told to ignore it, the mean skips it
    assert torch.allclose(model(padded, mask)[0], alone[0], atol=1e-5)
    decoder = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="pooling 'first' needs an encoder"):
        SequenceClassifier(build_model(decoder), 2, "first")
    last = SequenceClassifier(build_model(decoder), 2).eval()
    assert torch.allclose(last(padded, mask)[0], last(ids, torch.ones_like(ids))[0], atol=1e-5)


def test_load_judge_finds_a_classifier_and_its_labels(
    corpus: tuple[Path, tokenizers.Tokenizer], tmp_path: Path
) -> None:
    path, tok = corpus
    checkpoint = classifier_checkpoint(tmp_path / "cls", tok, labels=("bad", "good"))
    judge = load_judge(tmp_path / "cls", tokenizer=path.parent / "tokenizer.json")
    assert isinstance(judge, LlmforgeClassifierJudge) and judge.good == ("good",)
    assert judge.name == "cls"
    texts = ["The king said", "Shares rose"]
    expected = predict_proba(judge.model, tok, texts)[:, 1]
    assert judge.score(texts, ["", ""]) == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match=r"judge labels \['great'\] are not labels"):
        load_judge(checkpoint, tokenizer=path.parent / "tokenizer.json", labels=["great"])


def classifier_checkpoint(
    out: Path, tok: tokenizers.Tokenizer, labels: tuple[str, ...] = ("bad", "good")
) -> Path:
    """An untrained encoder classifier saved as a classification run saves one."""
    torch.manual_seed(1)
    config = ModelConfig(
        arch="encoder", vocab_size=tok.get_vocab_size(), block_size=BLOCK, n_layer=1, n_head=2,
        n_embd=16,
    )  # fmt: skip
    model = SequenceClassifier(build_model(config), len(labels))
    state = {"classifier": {"labels": list(labels), "num_labels": len(labels), "pooling": "mean"}}
    return save_checkpoint(
        out / "checkpoints" / "step_00000001",
        model=model,
        config=config,
        optimizer=None,
        trainer_state=state,
    )


def test_the_job_keeps_rejected_records_and_refuses_what_cannot_train(
    corpus: tuple[Path, tokenizers.Tokenizer], tmp_path: Path
) -> None:
    from contracts.specs import FinetuneSpec
    from ray_jobs import finetune_classify as job
    from ray_jobs.entrypoint import JobError

    path, tok = corpus
    decoder = base_checkpoint(tmp_path, "decoder", tok.get_vocab_size())
    config = ModelConfig.load(decoder / "config.json")
    out = tmp_path / "out"
    out.mkdir()
    fields = {"checkpoint": str(decoder), "data": str(path), "output": str(out)}
    spec = FinetuneSpec.model_validate({**fields, "classification": {}})
    assert spec.classification is not None
    prepared = job.prepare(spec, spec.classification, tok, config, str(out))
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == [
        "invalid_json", "wrong_type", "empty_text", "missing_label", "wrong_type",
    ]  # fmt: skip
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["labels"] == ["book", "news"] and prepared.rejected == []

    one_label = tmp_path / "one.jsonl"
    one_label.write_text(json.dumps({"text": "a", "label": "x"}) + "\n{bad\n")
    lonely = spec.model_copy(update={"data": str(one_label)})
    with pytest.raises(JobError, match=r"at least two labels.*rejected: \{'invalid_json': 1\}"):
        job.prepare(lonely, spec.classification, tok, config, str(out))
    first = FinetuneSpec.model_validate({**fields, "classification": {"pooling": "first"}})
    with pytest.raises(JobError, match=r"classification\.pooling: pooling 'first' needs an enc"):
        job.run_classification(first, first.classification)
    classifier = classifier_checkpoint(tmp_path / "cls", tok)
    again = FinetuneSpec.model_validate({**fields, "checkpoint": str(classifier)})
    with pytest.raises(JobError, match="is a classifier's checkpoint: start from a language"):
        job.run_classification(again, spec.classification)

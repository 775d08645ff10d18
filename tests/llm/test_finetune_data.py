"""Instruction data for fine-tuning: templates, record checks, masking, truncation, batches.

Masks are checked by hand on a word-level tokenizer whose ids can be read off the vocabulary;
the real Alpaca file is read with a real BPE tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from jinja2.exceptions import SecurityError
from tokenizers import models, pre_tokenizers

from llm.finetune.batches import collate, example_batches
from llm.finetune.data import (
    IGNORE_INDEX,
    DataOptions,
    Segment,
    TokenizedSet,
    prepare,
    render,
    split_indices,
    tokenize_segments,
)
from llm.finetune.records import Chat, Instruction, Message, field_map, parse_record
from llm.finetune.templates import chat_template, instruction_template
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.tokenizer.bpe import eos_id, load_tokenizer
from tests.shared import DATA

ALPACA_FILE = DATA / "instruct" / "alpaca_5000.json"
WORDS = ["<|endoftext|>", "<|pad|>", "[UNK]", "Q", "A", "add", "two", "and", "three", "five"]
WORDS += ["ok", "hi", "say", "sys", "system", "user", "long"]
ID = {w: i for i, w in enumerate(WORDS)}
EOS, PAD = ID["<|endoftext|>"], ID["<|pad|>"]
QA = "Q {instruction} {input} A"


@pytest.fixture(scope="module")
def words() -> tokenizers.Tokenizer:
    """One token per space-separated word, ids in WORDS order."""
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=ID, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- templates ----------------------------------------------------------------------------------


def test_alpaca_template_with_and_without_input() -> None:
    alpaca = instruction_template("alpaca")
    assert alpaca.render({"instruction": "Name a fruit.", "input": ""}) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a fruit.\n\n### Response:\n"
    )
    assert alpaca.render({"instruction": "Classify it.", "input": "Banana"}) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nClassify it.\n\n### Input:\nBanana\n\n### Response:\n"
    )


def test_format_string_and_jinja_templates_render_the_same() -> None:
    as_format = instruction_template("Q: {instruction}\nC: {input}\nA:")
    as_jinja = instruction_template("Q: {{ instruction }}\nC: {{ input }}\nA:")
    values = {"instruction": "add", "input": "1 {2}"}  # braces in a value stay literal
    assert as_format.render(values) == as_jinja.render(values) == "Q: add\nC: 1 {2}\nA:"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ instruction }} {{ answer }}", "unknown fields ['answer']"),
        ("{instruction.__class__}", "plain names only"),
        ("{instruction} {}", "is not allowed"),
        ("{% if instruction %}", "not valid Jinja2"),
        ("just text {input}", "never uses {instruction}"),
    ],
)
def test_bad_templates_are_refused_up_front(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("[", r"\[")):
        instruction_template(source)


def test_jinja_runs_sandboxed(words, tmp_path: Path) -> None:
    # Templates come over REST: an attribute walk to Python internals is refused when the
    # template is compiled (a trial render), or, where only some values reach it, the record
    # that does is rejected with the reason rather than crashing the job.
    with pytest.raises(ValueError, match="unsafe"):
        instruction_template("{{ instruction.__class__.__mro__ }}")
    sneaky = "{% if input == 'boom' %}{{ input.__class__ }}{% endif %}Q {{ instruction }} A"
    with pytest.raises(SecurityError):
        render(Instruction("x", "boom", "y"), instruction_template(sneaky), chat_template("alpaca"))
    lines = [json.dumps({"instruction": "hi", "input": i, "output": "ok"}) for i in ("", "boom")]
    data = prepare(
        write_jsonl(tmp_path / "two.jsonl", lines),
        words,
        EOS,
        block_size=16,
        options=DataOptions(template=sneaky, val_fraction=0),
    )
    assert [(r.index, r.reason) for r in data.rejected] == [(1, "template_error")]
    assert data.train[0][0].tolist() == [*ids("Q hi A ok"), EOS]


# --- records ------------------------------------------------------------------------------------


def test_malformed_records_are_counted_with_reasons(words, tmp_path: Path) -> None:
    lines = [
        '{"instruction": "add two and three", "input": "", "output": "five"}',
        '{"instruction": "say hi", "output": "hi"}',  # no input: allowed
        '{"instruction": "say hi", "input": null, "output": "hi"}',  # null input: allowed
        "{not json",
        '{"instruction": "say hi", "input": ""}',
        '{"instruction": 7, "input": "", "output": "hi"}',
        '{"instruction": "say hi", "input": "", "output": "   "}',
        '{"instruction": "", "input": "", "output": "hi"}',
        '"a bare string"',
        '[{"role": "user", "content": "say hi"}]',
        '[{"role": "user", "content": "say hi"}, {"role": "bot", "content": "hi"}]',
        '{"messages": [{"role": "user"}, {"role": "assistant", "content": "hi"}]}',
        "",  # a blank line is not a record
        '[{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]',
    ]
    data = prepare(
        write_jsonl(tmp_path / "mixed.jsonl", lines),
        words,
        EOS,
        block_size=32,
        options=DataOptions(template=QA, chat_template="{role} {content}", val_fraction=0),
    )
    reasons = {r.index: r.reason for r in data.rejected}
    assert reasons == {
        3: "invalid_json",
        4: "missing_field",
        5: "wrong_type",
        6: "empty_output",
        7: "empty_instruction",
        8: "wrong_type",
        9: "no_assistant_turn",
        10: "bad_role",
        11: "bad_message",
    }
    assert data.stats["records"] == 13 and data.stats["kept"] == 4
    assert data.stats["rejected_by_reason"]["wrong_type"] == 2
    assert data.stats["by_format"] == {"instruction": 3, "chat": 1}
    bad = next(r for r in data.rejected if r.index == 5)
    assert "'instruction' is int" in bad.detail and bad.record["instruction"] == 7
    assert json.loads(json.dumps(bad.to_json()))["reason"] == "wrong_type"


def test_field_map_reads_other_layouts() -> None:
    dolly = {"instruction": "say hi", "context": "", "response": "hi"}
    fields = field_map({"input": "context", "output": "response"})
    assert parse_record(0, dolly, fields) == Instruction("say hi", "", "hi")
    sharegpt = {"conversations": [{"from": "user", "value": "say hi"}]}
    chat_fields = field_map({"messages": "conversations", "role": "from", "content": "value"})
    parsed = parse_record(0, sharegpt, chat_fields)
    assert not isinstance(parsed, Instruction | Chat) and parsed.reason == "no_assistant_turn"
    with pytest.raises(ValueError, match="unknown fields"):
        field_map({"answer": "output"})


# --- masking ------------------------------------------------------------------------------------


def test_labels_are_ignored_exactly_on_the_prompt(words) -> None:
    segments = render(
        Instruction("add two and three", "", "five"),
        instruction_template(QA),
        chat_template("alpaca"),
    )
    assert segments == [Segment("Q add two and three  A", False), Segment("five", True)]
    example = tokenize_segments(words, segments, EOS, max_tokens=64)
    assert example.ids == [*ids("Q add two and three A"), ID["five"], EOS]
    assert example.labels == [IGNORE_INDEX] * 6 + [ID["five"], EOS]
    assert example.prompt_len == 6 and not example.truncated
    on_prompt = tokenize_segments(words, segments, EOS, max_tokens=64, train_on_prompt=True)
    assert on_prompt.labels == on_prompt.ids


def test_chat_trains_on_every_assistant_turn(words) -> None:
    chat = Chat(
        (
            Message("system", "sys"),
            Message("user", "say hi"),
            Message("assistant", "hi"),
            Message("user", "say ok"),
            Message("assistant", "ok"),
        )
    )
    segments = render(chat, instruction_template("alpaca"), chat_template("{role} {content}"))
    example = tokenize_segments(words, segments, EOS, max_tokens=64)
    assert example.ids == [*ids("system sys user say hi hi"), EOS, *ids("user say ok ok"), EOS]
    ignored = [IGNORE_INDEX]
    assert example.labels == (ignored * 5 + [ID["hi"], EOS] + ignored * 3 + [ID["ok"], EOS])
    assert example.prompt_len == 10  # a sample completion is asked for the last answer


def test_collate_pads_right_and_ignores_prompt_and_padding(words) -> None:
    qa = instruction_template(QA)
    long = tokenize_segments(
        words, render(Instruction("add two and three", "", "five"), qa, qa), EOS, max_tokens=64
    )
    short = tokenize_segments(
        words, render(Instruction("hi", "", "ok"), qa, qa), EOS, max_tokens=64
    )
    rows = [(np.array(e.ids), np.array(e.trained)) for e in (long, short)]
    batch = collate(rows, PAD)
    q, a, n = ID["Q"], ID["A"], IGNORE_INDEX
    assert batch.input_ids.tolist() == [
        [q, ID["add"], ID["two"], ID["and"], ID["three"], a, ID["five"]],
        [q, ID["hi"], a, ID["ok"], PAD, PAD, PAD],
    ]
    # target t is token t+1: ignored where that token is prompt or padding
    assert batch.targets.tolist() == [
        [n, n, n, n, n, ID["five"], EOS],
        [n, n, ID["ok"], EOS, n, n, n],
    ]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert batch.tokens == 11


def test_right_padding_needs_no_attention_mask() -> None:
    """Why training passes no mask: causal attention already keeps real tokens off the padding."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    rows = [(np.arange(1, 12), np.ones(11, bool)), (np.arange(3, 8), np.ones(5, bool))]
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        plain, _ = model(batch.input_ids)
        masked, _ = model(batch.input_ids, attention_mask=batch.attention_mask)
        alone, _ = model(batch.input_ids[1:, :4])
    real = batch.attention_mask.bool()
    torch.testing.assert_close(plain[real], masked[real])
    torch.testing.assert_close(plain[1, :4], alone[0])


# --- truncation and split -----------------------------------------------------------------------


def test_truncation_keeps_a_cut_response_and_rejects_a_prompt_that_fills_the_block(
    words, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"instruction": "say hi", "output": " ".join(["long"] * 20)}),
        json.dumps({"instruction": " ".join(["long"] * 20), "output": "ok"}),
        json.dumps({"instruction": "say hi", "output": "hi"}),
    ]
    data = prepare(
        write_jsonl(tmp_path / "long.jsonl", lines),
        words,
        EOS,
        block_size=8,
        options=DataOptions(template=QA, val_fraction=0),
    )
    assert data.stats["truncated"] == 1 and data.stats["kept"] == 2
    assert [(r.index, r.reason) for r in data.rejected] == [(1, "no_response_after_truncation")]
    first, trained = data.train[0]
    assert len(first) == 9  # block_size inputs + the last one's target
    assert first.tolist() == ids("Q say hi A") + [ID["long"]] * 5 and trained[4:].all()


def test_split_is_deterministic_by_seed() -> None:
    train, val = split_indices(100, 0.1, seed=3)
    again = split_indices(100, 0.1, seed=3)
    other = split_indices(100, 0.1, seed=4)
    assert len(val) == 10 and sorted([*train, *val]) == list(range(100))
    assert np.array_equal(val, again[1]) and not np.array_equal(val, other[1])
    assert len(split_indices(3, 0.05, seed=0)[1]) == 1  # a small file still gets a val example
    assert len(split_indices(3, 0.0, seed=0)[1]) == 0


# --- batches ------------------------------------------------------------------------------------


def toy_set(n: int) -> TokenizedSet:
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        length = int(rng.integers(3, 9))
        examples.append((np.full(length, i + 1), np.ones(length, bool)))
    lengths = [len(e) for e, _ in examples]
    return TokenizedSet(
        tokens=np.concatenate([e for e, _ in examples]).astype(np.int32),
        trained=np.concatenate([m for _, m in examples]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        prompt_lens=np.zeros(n, np.int64),
    )


def test_batches_shard_across_ranks_and_resume_in_place() -> None:
    data = toy_set(21)
    ranks = [
        example_batches(data, batch_size=2, pad_id=0, rank=r, world_size=2, seed=1) for r in (0, 1)
    ]
    assert ranks[0].batches_per_epoch == 5  # 21 // 2 ranks // 2, the uneven tail dropped
    epoch = [[next(b).input_ids[:, 0].tolist() for _ in range(5)] for b in ranks]
    seen = [{first for batch in batches for first in batch} for batches in epoch]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 20

    a = example_batches(data, batch_size=2, pad_id=0, seed=1)
    for _ in range(13):  # into the second epoch
        next(a)
    b = example_batches(data, batch_size=2, pad_id=0, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(12):
        assert torch.equal(next(a).input_ids, next(b).input_ids)
    with pytest.raises(ValueError, match="seed=1, but this loader has seed=2"):
        example_batches(data, batch_size=2, pad_id=0, seed=2).load_state_dict(a.state_dict())


# --- the real Alpaca file -----------------------------------------------------------------------


def test_alpaca_file_with_a_real_tokenizer(shakespeare_shards: Path) -> None:
    if not ALPACA_FILE.is_file():
        pytest.skip(f"{ALPACA_FILE} absent")
    tok = load_tokenizer(shakespeare_shards / "tokenizer.json")
    eos = eos_id(tok)
    data = prepare(ALPACA_FILE, tok, eos, block_size=256, options=DataOptions(max_samples=400))
    stats = data.stats
    assert stats["records"] == 400 and stats["kept"] + stats["rejected"] == 400
    assert stats["train_examples"] + stats["val_examples"] == stats["kept"]
    assert stats["val_examples"] == round(stats["kept"] * 0.05)
    assert set(stats["rejected_by_reason"]) <= {"empty_output", "no_response_after_truncation"}
    # the first record (it has an input): Alpaca's prompt, not trained on; then output and EOS
    record = json.loads(ALPACA_FILE.read_text())[0]
    first = prepare(ALPACA_FILE, tok, eos, block_size=256, options=DataOptions(max_samples=1))
    tokens, trained = first.train[0]
    prompt = instruction_template("alpaca").render(record)
    assert tok.decode(tokens[: int(np.argmax(trained))].tolist()) == prompt
    assert tok.decode(tokens[trained].tolist()) == record["output"]
    assert tokens[-1] == eos and trained[-1] and "### Input:" in prompt
    everything = prepare(ALPACA_FILE, tok, eos, block_size=256)
    empty = [r for r in everything.rejected if r.reason == "empty_output"]
    assert len(empty) == 2 and all(not r.record["output"].strip() for r in empty)

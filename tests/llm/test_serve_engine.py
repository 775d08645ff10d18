"""The continuous-batching engine: rows of different lengths in one forward, joins mid-flight,
seeded sampling independent of the batch, stop strings, echo/logprobs, cancellation, the queue."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import torch

from llm.generate import generate
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.serve.engine import Engine, RequestHandle
from llm.serve.errors import ParamError, QueueFull
from llm.serve.params import SamplingParams
from llm.serve.text import REPLACEMENT, StopText

BASE = dict(vocab_size=64, block_size=48, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "gpt2": {},
    "llama_gqa": dict(norm="rmsnorm", activation="swiglu", position="rope", n_kv_head=2),
    "alibi": {"position": "alibi"},
}
EOS = 63
PROMPTS = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [7], [30, 31, 32, 33, 34]]


def build(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**BASE, **overrides})).eval()  # type: ignore[arg-type]


def letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


class Gate:
    """A decode function that blocks the engine thread when a choice reaches ``at`` tokens,
    until ``open()``: a deterministic point to submit more requests mid-flight."""

    def __init__(self, at: int) -> None:
        self.at, self.event = at, threading.Event()

    def __call__(self, ids: list[int]) -> str:
        if len(ids) == self.at:
            self.event.wait(10)
        return letters(ids)

    def open(self) -> None:
        self.event.set()


@pytest.fixture()
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(model: GPT, decode: Callable[[list[int]], str] = letters, **kw: object) -> Engine:
        made.append(Engine(model, decode, eos_id=EOS, **kw))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def wait_idle(engine: Engine) -> None:
    """The slots of ended choices are freed just after their last delta: wait for it."""
    deadline = time.monotonic() + 10
    while engine.busy and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.load == (0, 0)


GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_slot_cache_rows_of_different_lengths_match_full_forward(variant: str) -> None:
    model = build(**VARIANTS[variant])
    cache = model.new_slot_cache(3)
    seqs = [torch.randint(0, 64, (n,)) for n in (4, 9, 6)]
    with torch.no_grad():
        for row, seq in enumerate(seqs):  # each prefilled alone into its slot
            model(seq[:-2][None], cache=cache.rows(row, row + 1))
        step = [model(torch.stack([s[-2 + t] for s in seqs])[:, None], cache=cache)[0]
                for t in range(2)]  # fmt: skip
        for row, seq in enumerate(seqs):
            full = model(seq[None])[0][0, -2:]
            got = torch.stack([step[t][row, 0] for t in range(2)])
            torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_greedy_equals_one_at_a_time_with_joins_mid_flight(variant, engines) -> None:
    model = build(**VARIANTS[variant])
    gate = Gate(at=2)
    engine = engines(model, gate, max_batch=4)
    first = engine.submit([PROMPTS[0]], GREEDY)
    stream = iter(first)
    got0 = [next(stream)]  # the first request is running; the engine stops at its token 2
    later = [engine.submit([p], GREEDY) for p in PROMPTS[1:]]
    gate.open()
    got0 += list(stream)
    outputs = [[t.id for d in got0 for t in d.tokens]]
    outputs += [[t.id for d in h for t in d.tokens] for h in later]
    alone = [generate(model, p, 20, temperature=0) for p in PROMPTS]
    assert outputs == alone
    # the later ones joined the first one's batch: more rows than one per step
    assert engine.stats.mean_batch > 1.5 and engine.stats.prefills == 2


def _tokens(handle: RequestHandle) -> list[int]:
    return [t.id for d in handle for t in d.tokens]


def test_simultaneous_arrivals_are_prefilled_in_one_forward(engines) -> None:
    """16 requests that arrive together share one prefill forward, and their first tokens come
    out of it before any decoding step (time to first token is one batched prefill, not 16);
    then they decode together, each one's tokens those it makes alone."""
    model = build(**VARIANTS["llama_gqa"])
    engine = engines(model, max_batch=16)
    prompts = [[(7 * i + j) % 60 for j in range(1 + i % 9)] for i in range(16)]  # 1 to 9 long
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    # the engine thread takes its lock to admit: holding it, all 16 are waiting when it looks
    with engine._cond:
        handles = [engine.submit([p], one) for p in prompts]
    firsts = [_tokens(h) for h in handles]
    assert (engine.stats.prefills, engine.stats.steps) == (1, 0)
    with engine._cond:
        handles = [engine.submit([p], replace(GREEDY, max_tokens=8)) for p in prompts]
    outputs = [_tokens(h) for h in handles]
    assert (engine.stats.prefills, engine.stats.steps, engine.stats.mean_batch) == (2, 7, 16)
    assert outputs == [generate(model, p, 8, temperature=0) for p in prompts]
    assert firsts == [out[:1] for out in outputs]


def test_arrivals_during_a_prefill_are_prefilled_before_the_next_step(engines) -> None:
    """Requests that arrive while a prefill runs get their own prefill before the decoding step,
    so their first tokens wait for no step, and every row decodes together from the first."""
    model = build()
    gate = Gate(at=1)  # the engine stops at the first request's first token (in its prefill)
    engine = engines(model, gate, max_batch=4)
    params = replace(GREEDY, max_tokens=6)
    first = engine.submit([PROMPTS[0]], params)
    deadline = time.monotonic() + 10
    while engine.load != (1, 0) and time.monotonic() < deadline:  # the first one is admitted
        time.sleep(0.001)
    later = [engine.submit([p], params) for p in PROMPTS[1:]]
    gate.open()
    outputs = [_tokens(h) for h in (first, *later)]
    assert outputs == [generate(model, p, 6, temperature=0) for p in PROMPTS]
    # two prefills, then 5 steps of all four rows (a step before the second prefill makes 6)
    assert (engine.stats.prefills, engine.stats.steps, engine.stats.rows_stepped) == (2, 5, 20)


def test_seeded_sampling_gives_the_same_tokens_batched_or_alone(engines) -> None:
    model = build(**VARIANTS["llama_gqa"])
    engine = engines(model, max_batch=8)
    params = SamplingParams(max_tokens=16, temperature=1.0, top_k=20, top_p=0.9, seed=7, n=2)
    alone = engine.generate([PROMPTS[1]], params)
    second_alone = engine.generate([PROMPTS[1]], replace(params, n=1, seed=8))
    gate = Gate(at=3)
    busy = engines(model, gate, max_batch=8)
    noise = [busy.submit([p], SamplingParams(max_tokens=16, seed=i)) for i, p in enumerate(PROMPTS)]
    batched = busy.submit([PROMPTS[1]], params)
    gate.open()
    deltas = list(batched)
    result = [[t.id for d in deltas if d.index == i for t in d.tokens] for i in range(2)]
    for handle in noise:
        list(handle)
    assert result[0] == alone[0] and result[1] == alone[1]
    assert alone[1] == second_alone[0]  # choice i samples with seed + i
    assert alone[0] != alone[1]


def test_stop_string_cuts_the_completion_before_it(engines) -> None:
    model = build()
    engine = engines(model)
    full = engine.submit([PROMPTS[0]], GREEDY).result()
    text = full.ordered()[0].text
    stop = text[5:7]
    choice = engine.submit([PROMPTS[0]], replace(GREEDY, stop=(stop,))).result().ordered()[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop"
    assert full.ordered()[0].finish_reason == "length" and full.usage is not None
    assert full.usage.completion_tokens == 20


def test_text_that_may_become_a_stop_string_is_held_back() -> None:
    stop = StopText(letters, stops=("bcd",))
    assert stop.push(0) == ("a", False)  # "a"
    assert stop.push(1) == ("", False)  # "ab": "b" may start "bcd"
    assert stop.push(2) == ("", False)  # "abc"
    assert stop.push(4) == ("bce", False)  # "abce": not a stop after all
    assert stop.push(1) == ("", False)
    assert stop.push(2) == ("", False)
    assert stop.push(3) == ("", True)  # "abcebcd": ends before the stop string
    assert stop.text[: stop.sent] == "abce"


def byte_level(ids: list[int]) -> str:
    """A byte-level BPE's decode (GPT-2's: the bytes, invalid ones as U+FFFD, maximal subparts)."""
    return bytes(ids).decode("utf-8", errors="replace")


def byte_fallback(ids: list[int]) -> str:
    """A byte-fallback decode (Llama's SentencePiece): a run of bytes that is not valid UTF-8
    becomes one U+FFFD per byte."""
    try:
        return bytes(ids).decode("utf-8")
    except UnicodeDecodeError:
        return REPLACEMENT * len(ids)


def test_stray_bytes_stream_out_holding_back_at_most_an_incomplete_character() -> None:
    stop = StopText(byte_level)
    # continuation bytes with no lead byte can never become a character: only the last 3 wait
    assert [stop.push(0x81)[0] for _ in range(6)] == [
        "",
        "",
        "",
        REPLACEMENT,
        REPLACEMENT,
        REPLACEMENT,
    ]
    assert stop.flush() == REPLACEMENT * 3
    split = StopText(byte_level)  # one character over three tokens is sent whole, once
    assert [split.push(b)[0] for b in "あ".encode()] == ["", "", "あ"]
    emoji = StopText(byte_level)
    assert [emoji.push(b)[0] for b in b"a" + "😀".encode()] == ["a", "", "", "", "😀"]


def test_a_byte_fallback_character_is_held_until_whole() -> None:
    """Byte fallback shows a truncated character as one U+FFFD per byte (up to three)."""
    for character in ("é", "あ", "😀"):
        stop = StopText(byte_fallback)
        pieces = [stop.push(b)[0] for b in character.encode()]
        assert pieces == [""] * (len(pieces) - 1) + [character]


def test_streamed_text_never_changes_and_adds_up_to_the_whole() -> None:
    """Random runs of valid characters, stray and truncated bytes through a byte-level decode:
    every piece sent is final (a prefix of the whole text at the end), and the pieces plus the
    flush are the whole."""
    decode = byte_level
    rng = random.Random(0)
    for _ in range(200):
        data = b""
        for _ in range(rng.randint(1, 12)):
            what = rng.random()
            if what < 0.4:
                data += rng.choice(["a", "é", "あ", "😀", " "]).encode()
            elif what < 0.7:
                data += bytes([rng.randint(0x80, 0xBF)])  # a stray continuation byte
            else:
                data += rng.choice(["あ", "😀"]).encode()[: rng.randint(1, 3)]  # truncated
        stop, pieces = StopText(decode), []
        for b in data:
            pieces.append(stop.push(b)[0])
            assert decode(list(data)).startswith("".join(pieces))
        assert "".join(pieces) + stop.flush() == decode(list(data))


def test_eos_ends_a_choice_with_stop(engines) -> None:
    model = build()
    greedy = generate(model, PROMPTS[2], 10, temperature=0)
    engine = Engine(model, letters, eos_id=greedy[3])
    try:
        done = engine.submit([PROMPTS[2]], SamplingParams(max_tokens=10, temperature=0)).result()
    finally:
        engine.close()
    choice = done.ordered()[0]
    assert choice.finish_reason == "stop"
    assert choice.text == letters(greedy[: greedy.index(greedy[3])])


def test_echo_with_logprobs_scores_the_prompt(engines) -> None:
    model = build()
    engine = engines(model)
    params = SamplingParams(max_tokens=0, echo=True, logprobs=2)
    done = engine.submit([PROMPTS[1]], params).result()
    choice = done.ordered()[0]
    assert choice.text == letters(PROMPTS[1]) and choice.finish_reason == "length"
    with torch.no_grad():
        expected = model(torch.tensor([PROMPTS[1]]))[0][0].log_softmax(-1)
    want = [float(expected[i, t]) for i, t in enumerate(PROMPTS[1][1:])]
    assert choice.tokens[0].logprob is None
    assert [t.logprob for t in choice.tokens[1:]] == pytest.approx(want, abs=1e-4)
    assert all(len(t.top) == 2 for t in choice.tokens[1:])
    assert done.usage is not None and done.usage.completion_tokens == 0


def test_cancel_takes_the_choice_out_and_frees_its_slot(engines) -> None:
    model = build()
    gate = Gate(at=3)
    engine = engines(model, gate, max_batch=1, max_queue=2)
    running = engine.submit([PROMPTS[0]], SamplingParams(max_tokens=40, ignore_eos=True))
    waiting = engine.submit([PROMPTS[1]], GREEDY)
    running.cancel()
    gate.open()
    got = list(running)
    assert len(got) < 40 and running.usage is None
    # the slot went to the waiting request, which completes
    assert sum(len(d.tokens) for d in waiting) == 20
    wait_idle(engine)


def test_a_full_queue_refuses_with_retry_after(engines) -> None:
    model = build()
    gate = Gate(at=2)
    engine = engines(model, gate, max_batch=1, max_queue=1)
    first = engine.submit([PROMPTS[0]], GREEDY)
    next(iter(first))  # admitted: the engine holds it, blocked at token 2
    queued = engine.submit([PROMPTS[1]], GREEDY)
    with pytest.raises(QueueFull) as refused:
        engine.submit([PROMPTS[2]], GREEDY)
    assert refused.value.retry_after_s >= 1
    gate.open()
    assert sum(len(d.tokens) for d in queued) == 20


@pytest.mark.parametrize(
    ("prompts", "params", "field"),
    [
        ([list(range(48))], SamplingParams(max_tokens=1), "prompt"),
        ([list(range(40))], SamplingParams(max_tokens=9), "max_tokens"),
        ([[1]], SamplingParams(n=5), "n"),
        ([[1]], SamplingParams(temperature=3), "temperature"),
        ([[1]], SamplingParams(top_p=0), "top_p"),
        ([[]], SamplingParams(), "prompt"),
        ([[1]], SamplingParams(stop=("",)), "stop"),
    ],
)
def test_requests_it_can_never_run_name_the_field(prompts, params, field, engines) -> None:
    engine = engines(build(), max_batch=4)
    with pytest.raises(ParamError) as bad:
        engine.submit(prompts, params)
    assert bad.value.field == field


def test_the_first_token_is_delivered_right_after_prefill(engines) -> None:
    """Time to first token is one prefill: the first delta reaches an awaiting event loop
    while the engine is still inside its next decoding step (held here by the gate)."""
    model = build()
    gate = Gate(at=2)  # the decoding step's sample (each choice's second token) blocks
    engine = engines(model, gate, max_batch=2)

    async def first_delta() -> str:
        handle = engine.submit([PROMPTS[0]], GREEDY, loop=asyncio.get_running_loop())
        batches = handle.batches()
        first = await asyncio.wait_for(anext(batches), timeout=5)
        gate.open()
        async for _ in batches:
            pass
        return first[0].text

    assert asyncio.run(first_delta()) == letters(engine.generate([PROMPTS[0]], GREEDY)[0][:1])
    wait_idle(engine)

"""Continuous batching over a GPT decoder: one forward pass per step for every running choice.

A background thread owns the model and a SlotKVCache of ``max_batch`` slots. Each step it
admits waiting requests into free slots (prefilling all their prompts in one padded forward, and
sending their first tokens at once: time to first token is one prefill, not a prefill and a
step; requests that arrived during that prefill are prefilled next, still before the step), then
runs one decoding forward over every running row, samples each row with its own parameters and
generator, and retires the rows that finished or whose client left, so their slots are free
for the next step. Running rows are kept in slots 0..B-1 (the last row moves into a freed
slot), so a step reads a plain slice of the cache. A bounded queue holds what does not fit;
past it, ``submit`` raises QueueFull.

The engine is plain Python + PyTorch (no web framework): the control plane wraps it in routes,
and a Ray Serve replica or an adapter-serving layer can wrap it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from llm.model.gpt import GPT
from llm.model.layers import SlotKVCache
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.outputs import Completion, Delta, TokenInfo, Usage
from llm.serve.params import SamplingParams
from llm.serve.sampler import RowSampler, token_infos
from llm.serve.text import StopText

log = logging.getLogger("llmforge.serve")


class _End:
    """The marker after a request's last delta."""


class RequestHandle:
    """A submitted request: iterate it (or ``async for`` with a loop) for its Deltas; ``usage``
    is set once they end. ``cancel`` takes its choices out of the batch at the next step."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop | None) -> None:
        self._engine, self._loop = engine, loop
        self._sync: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._async: asyncio.Queue[object] | None = asyncio.Queue() if loop else None
        self.usage: Usage | None = None
        self.cancelled = False
        self.finished = False  # the engine is done with it
        self._drained = False  # its consumer has read the end

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = True
            self._engine.wake()

    def _put(self, item: object) -> None:
        """From the engine thread: now, or with the step's other items for an event loop."""
        if self._async is None or self._loop is None:
            self._sync.put(item)
        else:
            self._engine._outbox.setdefault(self._loop, []).append((self, item))

    def _unwrap(self, item: object) -> Delta | None:
        if isinstance(item, BaseException):
            raise EngineError(str(item)) from item
        if isinstance(item, Usage):
            self.usage = item
            return None
        if isinstance(item, _End):
            return None
        assert isinstance(item, Delta)
        return item

    def __iter__(self) -> Iterator[Delta]:
        if self._async is not None:
            raise TypeError("this request was submitted with an event loop: use `async for`")
        while not self._drained:
            item = self._sync.get()
            if isinstance(item, _End):
                self._drained = True
                return
            delta = self._unwrap(item)
            if delta is not None:
                yield delta

    def result(self) -> Completion:
        """Wait for every delta (blocking) and fold them into choices and usage."""
        done = Completion()
        for delta in self:
            done.add(delta)
        done.usage = self.usage
        return done

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """The deltas as they arrive, all those already waiting at once: a stream that fell
        behind catches up in one write instead of one per token."""
        if self._async is None:
            raise TypeError("this request was submitted without an event loop: iterate it")
        while not self._drained:
            items = [await self._async.get()]
            while not self._async.empty():
                items.append(self._async.get_nowait())
            deltas = []
            for item in items:
                if isinstance(item, _End):
                    self._drained = True
                    break
                delta = self._unwrap(item)
                if delta is not None:
                    deltas.append(delta)
            if deltas:
                yield deltas

    async def __aiter__(self) -> AsyncIterator[Delta]:
        async for deltas in self.batches():
            for delta in deltas:
                yield delta


def _hand_over(items: list[tuple[RequestHandle, object]]) -> None:
    for handle, item in items:
        assert handle._async is not None
        handle._async.put_nowait(item)


@dataclass
class _Request:
    prompts: list[list[int]]
    params: SamplingParams
    handle: RequestHandle
    left: int = 0  # choices still running
    completion_tokens: int = 0

    @property
    def width(self) -> int:
        return len(self.prompts) * self.params.n


@dataclass
class _Sequence:
    """One choice of one prompt: its slot's sequence."""

    request: _Request
    index: int
    prompt: list[int]
    sampler: RowSampler
    text: StopText
    generated: int = 0
    pending: int | None = None  # sampled, not yet in the cache
    done: bool = False

    @property
    def params(self) -> SamplingParams:
        return self.request.params


@dataclass
class EngineStats:
    steps: int = 0
    rows_stepped: int = 0  # sum of batch sizes over decoding steps
    prefills: int = 0
    tokens: int = 0

    @property
    def mean_batch(self) -> float:
        return self.rows_stepped / self.steps if self.steps else 0.0


class Engine:
    """Serve one GPT with continuous batching (see the module docstring)."""

    def __init__(
        self,
        model: GPT,
        decode: Callable[[list[int]], str],
        *,
        eos_id: int | None,
        max_batch: int = 16,
        max_queue: int = 64,
        retry_after_s: int = 1,
        name: str = "model",
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0: {max_batch}, {max_queue}")
        self.model, self.decode, self.eos_id = model.eval(), decode, eos_id
        self.context = model.config.block_size
        self.max_batch, self.max_queue, self.retry_after_s = max_batch, max_queue, retry_after_s
        self.device = next(model.parameters()).device
        self.cache: SlotKVCache = model.new_slot_cache(max_batch)
        self.stats = EngineStats()
        self._running: list[_Sequence] = []  # row i lives in cache slot i
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._token_text: dict[int, str] = {}
        # what the step produced for requests awaited on event loops, handed over once a step
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, object]]] = {}
        self._thread = threading.Thread(target=self._run, name=f"llmforge-engine-{name}")
        self._thread.daemon = True
        self._thread.start()

    # --- the caller's side -------------------------------------------------------------------

    def check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        """Raise ParamError for a request this engine can never run."""
        params.validate()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ParamError("prompt", "must hold at least one token")
        if len(prompts) * params.n > self.max_batch:
            raise ParamError(
                "n",
                f"{len(prompts)} prompt(s) x n={params.n} choices exceed the {self.max_batch} "
                "sequences this model runs at once",
            )
        longest = max(len(p) for p in prompts)
        if longest >= self.context:
            raise ParamError(
                "prompt",
                f"the prompt is {longest} tokens but the model's context is {self.context}: "
                "shorten it, or ask for truncation",
            )
        if longest + params.max_tokens > self.context:
            raise ParamError(
                "max_tokens",
                f"the prompt ({longest} tokens) plus max_tokens ({params.max_tokens}) exceeds "
                f"the model's context of {self.context} tokens: lower max_tokens to at most "
                f"{self.context - longest}",
            )

    def submit(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RequestHandle:
        """Queue a request of one or more prompts (n choices each; choice p*n+i is prompt p's
        i-th). With ``loop``, its deltas are delivered to that event loop (``async for``)."""
        self.check(prompts, params)
        handle = RequestHandle(self, loop)
        request = _Request([list(p) for p in prompts], params, handle)
        with self._cond:
            if self._closed:
                raise EngineError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are already waiting for this model",
                    self.retry_after_s,
                )
            self._waiting.append(request)
            self._cond.notify()
        return handle

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """Each choice's generated token ids (blocking; tests and scripts)."""
        out: list[list[int]] = [[] for _ in range(len(prompts) * params.n)]
        for delta in self.submit(prompts, params):
            out[delta.index].extend(t.id for t in delta.tokens)
        return out

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    @property
    def load(self) -> tuple[int, int]:
        """(running sequences, waiting requests)."""
        return len(self._running), len(self._waiting)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; requests still in the engine end with an EngineError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # --- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._running and not self._waiting:
                    self._cond.wait()
                if self._closed:
                    break
                # a client that left frees its slots before anyone is admitted
                self._retire([s for s in self._running if s.request.handle.cancelled])
                joining = self._admit()
            try:
                with torch.inference_mode():
                    while joining:
                        self._prefill(joining)
                        # first tokens go out now, not after the step's decoding forward
                        self._deliver()
                        # those that arrived during the prefill join before the decoding step
                        # too (at most max_batch rounds: each one fills a slot)
                        with self._cond:
                            joining = self._admit()
                    if self._running:
                        self._decode_step()
            except Exception as e:  # one bad step must not kill the server's engine
                log.exception("engine step failed")
                self._fail(EngineError(f"generation failed: {e}"), joining)
            self._deliver()
        self._fail_all(EngineError("the engine closed"))
        self._deliver()

    def _deliver(self) -> None:
        """One call into each event loop per step, not one per token: waking a loop from
        another thread is the costly part."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_hand_over, items)
            except RuntimeError:  # the loop closed: nobody is listening any more
                for handle, _ in items:
                    handle.cancelled = True

    def _admit(self) -> list[_Sequence]:
        """Waiting requests (in order) whose choices all fit in the free slots."""
        for request in [r for r in self._waiting if r.handle.cancelled]:
            self._waiting.remove(request)  # its place in the queue goes to the next client
            self._finish(request)
        free = self.max_batch - len(self._running)
        joining: list[_Sequence] = []
        while self._waiting:
            request = self._waiting[0]
            if request.width > free - len(joining):
                break
            self._waiting.popleft()
            request.left = request.width
            for p, prompt in enumerate(request.prompts):
                for i in range(request.params.n):
                    index = p * request.params.n + i
                    sampler = RowSampler.create(request.params, index, self.device)
                    text = StopText(self.decode, request.params.stop)
                    joining.append(_Sequence(request, index, prompt, sampler, text))
        return joining

    def _prefill(self, joining: list[_Sequence]) -> None:
        """Run the joining prompts in one forward into their slots and sample each one's
        first token."""
        start = len(self._running)
        lengths = [len(s.prompt) for s in joining]
        ids = torch.zeros(len(joining), max(lengths), dtype=torch.long, device=self.device)
        for row, seq in enumerate(joining):
            ids[row, : len(seq.prompt)] = torch.tensor(seq.prompt, device=self.device)
        view = self.cache.rows(start, start + len(joining))
        view.lengths.zero_()
        # right padding writes junk past a row's prompt; its length (set below) masks it off
        hidden = self.model.slot_hidden(ids, view)
        view.lengths.copy_(torch.tensor(lengths, device=self.device))
        self._running.extend(joining)
        self.stats.prefills += 1
        ends = torch.tensor(lengths, device=self.device) - 1
        last = hidden[torch.arange(len(joining), device=self.device), ends]
        logits = self.model.lm_head(last).float()
        for row, seq in enumerate(joining):
            if seq.params.echo:
                self._echo(seq, hidden[row, : lengths[row]])
        self._sample(joining, logits)

    def _echo(self, seq: _Sequence, hidden: torch.Tensor) -> None:
        """The prompt as the choice's first text (with its logprobs when asked)."""
        tokens: tuple[TokenInfo, ...] = ()
        if seq.params.logprobs is not None:
            logprobs = self.model.lm_head(hidden[:-1]).float().log_softmax(dim=-1)
            top = min(seq.params.logprobs, logprobs.shape[-1])
            rest = token_infos(logprobs, seq.prompt[1:], top, self._text_of)
            first = TokenInfo(seq.prompt[0], self._text_of(seq.prompt[0]), None)
            tokens = (first, *rest)
        self._emit(seq, Delta(seq.index, self.decode(seq.prompt), tokens))

    def _decode_step(self) -> None:
        rows = len(self._running)
        # every running row holds the token it sampled last: rows that ended were retired
        tokens = [s.pending for s in self._running]
        ids = torch.tensor(tokens, device=self.device)[:, None]
        hidden = self.model.slot_hidden(ids, self.cache.rows(0, rows))
        logits = self.model.lm_head(hidden[:, -1]).float()
        self.stats.steps += 1
        self.stats.rows_stepped += rows
        self._sample(self._running, logits)

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        wants_logprobs = [r for r, s in enumerate(seqs) if s.params.logprobs is not None]
        logprobs = logits[wants_logprobs].log_softmax(dim=-1) if wants_logprobs else None
        for row, seq in enumerate(seqs):
            seq.pending = None
            if seq.done or seq.request.handle.cancelled:
                continue
            if seq.generated >= seq.params.max_tokens:  # max_tokens=0: the prompt only
                self._end_choice(seq, "length")
                continue
            token = seq.sampler.pick(logits[row])
            seq.generated += 1
            seq.request.completion_tokens += 1
            self.stats.tokens += 1
            if token == self.eos_id and not seq.params.ignore_eos:
                self._end_choice(seq, "stop", seq.text.flush())
                continue
            infos: tuple[TokenInfo, ...] = ()
            if logprobs is not None and seq.params.logprobs is not None:
                at = logprobs[wants_logprobs.index(row)][None]
                top = min(seq.params.logprobs, at.shape[-1])
                infos = tuple(token_infos(at, [token], top, self._text_of))
            else:
                infos = (TokenInfo(token, "", None),)
            text, stopped = seq.text.push(token)
            if stopped:
                self._end_choice(seq, "stop", text, infos)
            elif seq.generated >= seq.params.max_tokens:
                self._end_choice(seq, "length", text + seq.text.flush(), infos)
            else:
                seq.pending = token
                self._emit(seq, Delta(seq.index, text, infos))
        self._retire([s for s in seqs if s.done or s.request.handle.cancelled])

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.decode([token])
        return text

    def _end_choice(
        self, seq: _Sequence, reason: str, text: str = "", tokens: tuple[TokenInfo, ...] = ()
    ) -> None:
        seq.done = True
        self._emit(seq, Delta(seq.index, text, tokens, finish_reason=reason))
        seq.request.left -= 1
        if seq.request.left == 0:
            seq.request.handle._put(
                Usage(sum(len(p) for p in seq.request.prompts), seq.request.completion_tokens)
            )
            self._finish(seq.request)

    def _emit(self, seq: _Sequence, delta: Delta) -> None:
        if not seq.request.handle.cancelled:
            seq.request.handle._put(delta)

    def _finish(self, request: _Request) -> None:
        request.handle.finished = True
        request.handle._put(_End())

    def _retire(self, leaving: list[_Sequence]) -> None:
        """Free the slots of leaving rows; the last running row moves into each freed slot."""
        if not leaving:
            return
        gone = {id(s) for s in leaving}
        rows = sorted((r for r, s in enumerate(self._running) if id(s) in gone), reverse=True)
        for row in rows:
            seq = self._running[row]
            if seq.request.handle.cancelled and not seq.request.handle.finished:
                self._finish(seq.request)
            last = len(self._running) - 1
            if row != last:
                self.cache.move(last, row)
                self._running[row] = self._running[last]
            self._running.pop()

    def _fail(self, error: Exception, joining: list[_Sequence]) -> None:
        """End every request of the failed step with the error and free the cache."""
        failed = {id(s.request): s.request for s in [*self._running, *joining]}
        for request in failed.values():
            if not request.handle.finished:
                request.handle._put(error)
                self._finish(request)
        self._running.clear()

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        self._fail(error, [])
        for request in waiting:
            request.handle._put(error)
            self._finish(request)

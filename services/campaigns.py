"""Rating campaigns' generation: each model completes each prompt through the control plane's
own serving engines (``services.serving``), in a background thread, so that creating a
campaign answers at once (state ``generating``) and raters get pairs once it is ``open``.

One campaign generates at a time, model after model; a model's prompts share its
continuous-batching engine with the live completions traffic, taking at most half its slots.
Each completion is stored as it ends, so progress shows while it runs; a completion that cannot
be made (a model that cannot be loaded, a prompt too long for its context) is recorded with its
reason on the campaign. A control plane stopped mid-generation leaves the rest pending, and the
next start resumes them.

With several control-plane replicas on one store, only the scheduler's leader
(``services.leader``) generates: a campaign created on a standby waits for the leader, which
looks for campaigns left generating at start and every ``poll_s``; a standby that becomes the
leader resumes them, and a leader that loses the lock stops after the completion in hand,
leaving the rest pending for the next one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from llm.serve.chat import Message
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.params import SamplingParams
from services.leader import Leadership
from services.serving import Loaded, Serving, source_of
from services.store import campaigns as store
from services.store import registry
from services.store.models import (
    ArtifactCategory,
    Campaign,
    CampaignCompletion,
    CampaignPrompt,
    CampaignState,
)

if TYPE_CHECKING:
    from llm.serve.engine import RequestHandle

log = logging.getLogger("llmforge.campaigns")
COMMIT_EVERY = 16  # completions stored per commit while a model runs
MAX_ERROR = 1000  # characters of one recorded reason


def sampling(campaign: Campaign, prompt_index: int) -> SamplingParams:
    """The campaign's sampling parameters; prompt i samples with seed + i, so a completion is
    the same whether the engine ran it alone or batched."""
    p = campaign.params
    stop = p.get("stop")
    return SamplingParams(
        max_tokens=p["max_tokens"],
        temperature=p["temperature"],
        top_p=p["top_p"],
        top_k=p.get("top_k"),
        stop=() if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop)),
        seed=campaign.seed + prompt_index,
    )


def _add_error(campaign: Campaign, model: str, prompts: list[int] | None, error: str) -> None:
    """One entry per model and reason, with the prompts it stopped."""
    errors = [dict(e) for e in campaign.errors]
    for entry in errors:
        if entry["model"] == model and entry["error"] == error:
            if entry["prompts"] is not None and prompts is not None:
                entry["prompts"] = sorted({*entry["prompts"], *prompts})
            break
    else:
        errors.append({"model": model, "prompts": prompts, "error": error[:MAX_ERROR]})
    campaign.errors = errors  # a new list: JSON columns see assignment, not mutation


class CampaignRunner:
    """Generates campaigns in one background thread, on the leader only; ``start`` resumes the
    ones a stopped control plane left generating (and keeps looking every ``poll_s``: for
    campaigns created on a standby, and for leadership this process gains), ``stop`` lets the
    running one leave the rest pending."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        serving: Serving,
        leadership: Leadership | None = None,
        *,
        poll_s: float = 5.0,
    ) -> None:
        self.sessions, self.serving = sessions, serving
        self.leadership, self.poll_s = leadership, poll_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmforge-campaign")
        self._stopping = threading.Event()
        self._inflight: set[RequestHandle] = set()
        self._lock = threading.Lock()
        self._active: set[str] = set()  # submitted here and not ended yet
        self._watcher: threading.Thread | None = None

    def leads(self) -> bool:
        """Whether this process generates campaigns now (SQLite, or no leadership: always)."""
        return self.leadership is None or self.leadership.lead()

    def _halted(self) -> bool:
        """Stopping, or no longer the leader (what the last check found: no round trip)."""
        lost = self.leadership is not None and not self.leadership.is_leader
        return self._stopping.is_set() or lost

    def start(self) -> None:
        self.resume()
        self._watcher = threading.Thread(
            target=self._watch, name="llmforge-campaign-watch", daemon=True
        )
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            try:
                self.resume()
            except Exception:  # the store away for a moment: the next look tries again
                log.exception("could not look for campaigns to generate")

    def resume(self) -> list[str]:
        """Submit the campaigns left generating that this process is not running yet (on the
        leader; a standby submits none)."""
        if not self.leads():
            return []
        with self.sessions() as session:
            waiting = store.in_state(session, state=CampaignState.generating)
        resumed = [c for c in waiting if self.submit(c) is not None]
        for campaign_id in resumed:
            log.info("resuming the generation of campaign %s", campaign_id)
        return resumed

    def submit(self, campaign_id: str) -> Future[None] | None:
        """Generate the campaign here, when this process leads and is not at it already; else
        None (the leader picks it up)."""
        if self._stopping.is_set() or not self.leads():
            return None
        with self._lock:
            if campaign_id in self._active:
                return None
            self._active.add(campaign_id)
        return self._executor.submit(self._run, campaign_id)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for handle in self._inflight:
                handle.cancel()
        if self._watcher is not None:
            self._watcher.join()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, campaign_id: str) -> None:
        try:
            self._generate(campaign_id)
        except Exception as e:  # whatever it was, the campaign says so instead of hanging
            log.exception("campaign %s failed", campaign_id)
            with self.sessions() as session:
                campaign = store.get_campaign(session, campaign_id=campaign_id)
                if campaign is not None and campaign.state == CampaignState.generating.value:
                    campaign.state = CampaignState.failed.value
                    campaign.message = f"generation failed: {e}"[:MAX_ERROR]
                    session.commit()
        finally:
            with self._lock:
                self._active.discard(campaign_id)

    def _generate(self, campaign_id: str) -> None:
        with self.sessions() as session:
            campaign = store.get_campaign(session, campaign_id=campaign_id)
            if campaign is None or campaign.state != CampaignState.generating.value:
                return
            prompts = store.prompts_of(session, campaign_id=campaign_id)
            for model in campaign.models:
                if self._halted():
                    return
                pending = store.completions_of(
                    session, campaign_id=campaign_id, model=model, pending=True
                )
                if not pending:
                    continue
                loaded = self._load(session, campaign, model, pending)
                if loaded is not None:
                    self._complete(session, campaign, loaded, prompts, pending)
                if self._stopping.is_set():
                    session.rollback()  # what the cancelled requests returned is not kept
                    return
                session.commit()
            if self._halted():
                return  # the rest is pending: the next leader goes on with it
            store.finish_generation(session, campaign=campaign)
            session.commit()
            log.info("campaign %s: %s", campaign_id, campaign.state)

    def _load(
        self, session: Session, campaign: Campaign, model: str, pending: list[CampaignCompletion]
    ) -> Loaded | None:
        artifact = registry.get_artifact(
            session, artifact_id=model, category=ArtifactCategory.model
        )
        try:
            if artifact is None:
                raise ValueError("the model is no longer in the registry")
            return self.serving.engine_for(source_of(session, artifact))
        except Exception as e:  # a missing file, a model that is not a decoder, ...
            reason = f"model {model} cannot be served: {e}"
            for c in pending:
                c.error = reason[:MAX_ERROR]
            _add_error(campaign, model, None, reason)
            session.commit()
            return None

    def _prompt_ids(self, loaded: Loaded, campaign: Campaign, prompt: CampaignPrompt) -> list[int]:
        if campaign.chat:
            messages = prompt.messages or [{"role": "user", "content": prompt.text}]
            return loaded.served.chat_ids([Message(m["role"], m["content"]) for m in messages])
        return loaded.served.encode(prompt.text)

    def _complete(
        self,
        session: Session,
        campaign: Campaign,
        loaded: Loaded,
        prompts: Sequence[CampaignPrompt],
        pending: list[CampaignCompletion],
    ) -> None:
        """Submit the pending prompts to the model's engine (it batches them), at most half its
        slots at once so that live requests still find room and its queue stays free; store
        each completion as it ends (the oldest first)."""
        engine = loaded.engine
        at_once = max(1, engine.max_batch // 2)
        running: deque[tuple[CampaignCompletion, RequestHandle]] = deque()
        stored = 0

        def collect() -> None:
            nonlocal stored
            c, handle = running.popleft()
            try:
                done = handle.result()
            except EngineError as e:
                c.error = str(e)[:MAX_ERROR]
                _add_error(campaign, c.model, [c.prompt_index], str(e))
            else:
                choice = done.ordered()[0] if done.choices else None
                c.text = choice.text if choice is not None else ""
                c.finish_reason = choice.finish_reason if choice is not None else None
                c.tokens = done.usage.completion_tokens if done.usage else None
            finally:
                with self._lock:
                    self._inflight.discard(handle)
            stored += 1
            if stored % COMMIT_EVERY == 0 and not self._stopping.is_set():
                session.commit()

        for c in pending:
            if self._halted():
                break
            params = sampling(campaign, c.prompt_index)
            try:
                ids = self._prompt_ids(loaded, campaign, prompts[c.prompt_index])
                if campaign.params.get("truncate") and params.max_tokens < engine.context:
                    ids = ids[-(engine.context - params.max_tokens) :]
                engine.check([ids], params)
            except (ParamError, ValueError) as e:
                reason = e.message if isinstance(e, ParamError) else str(e)
                c.error = reason[:MAX_ERROR]
                _add_error(campaign, c.model, [c.prompt_index], reason)
                continue
            while len(running) >= at_once:
                collect()
            while True:
                try:
                    handle = engine.submit([ids], params)
                    break
                except QueueFull as e:  # live traffic fills the queue: wait for a place
                    if running:
                        collect()
                    elif self._stopping.wait(e.retry_after_s):
                        return
            with self._lock:
                self._inflight.add(handle)
            running.append((c, handle))
        while running:
            collect()

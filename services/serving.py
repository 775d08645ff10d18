"""Registered models served in the control-plane process (the embedded default): a registry
artifact -> a local model folder, its tokenizer and chat template -> one continuous-batching
engine per model, kept in an LRU pool (``llm.serve``).

Where the artifact lives on object storage, its checkpoint is fetched once into node-local
scratch. A model's tokenizer is the tokenizer.json in its checkpoint or output folder, else the
one of the token shards it was trained on (a train output keeps none of its own); a fine-tune's
chat template is the one its job was given. A LoRA adapter (kind ``adapter``, its base the
parent) is served as its base with the adapter applied, unmerged (``llm.train.checkpoint``
loads the two); it takes its base's tokenizer when it has none of its own.

What a load needs is read from the store first (``source_of``), so no store session or
connection is held while a model loads or a completion streams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from llm import storage
from llm.serve.pool import EnginePool, Loaded
from services.settings import Settings
from services.store.models import Artifact, Job

if TYPE_CHECKING:
    pass

# torch and the model code load with the first model served, not with the control plane
log = logging.getLogger("llmforge.serving")
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
ADAPTER_KIND = "adapter"  # a LoRA adapter's registry kind; its parent is its base


def tokenizer_uri(session: Session, artifact: Artifact) -> str | None:
    """Where a tokenizer.json for a checkpoint without one of its own is: beside the artifact's
    folder, else in the token shards it was made from (their manifest names it); an adapter
    without one, its base's."""
    return source_of(session, artifact).tokenizer_uri()


def chat_template(session: Session, artifact: Artifact) -> str | None:
    job = session.get(Job, artifact.job_id) if artifact.job_id else None
    if artifact.kind in ("finetuned", ADAPTER_KIND) and job is not None:
        template = job.spec.get("chat_template")
        return str(template) if template else None
    return None


@dataclass(frozen=True)
class ModelSource:
    """What loading a registered model takes, read from the store beforehand (the files it
    names are looked at only when it loads)."""

    id: str
    uri: str
    inputs: tuple[str, ...]
    chat_template: str | None
    base: ModelSource | None = None  # an adapter's

    @property
    def key(self) -> str:
        return f"{self.id}:{self.uri}"

    def tokenizer_uri(self) -> str | None:
        candidates = [storage.join(self.uri, TOKENIZER_FILE)]
        for source in self.inputs:
            manifest = storage.join(source, MANIFEST_FILE)
            if storage.is_file(manifest):
                candidates.append(
                    storage.join(source, storage.read_json(manifest)["tokenizer"]["file"])
                )
        found = next((uri for uri in candidates if storage.is_file(uri)), None)
        if found is None and self.base is not None:
            return self.base.tokenizer_uri()
        return found


def source_of(session: Session, artifact: Artifact) -> ModelSource:
    base = None
    if artifact.kind == ADAPTER_KIND and artifact.parent_id:
        parent = session.get(Artifact, artifact.parent_id)
        base = source_of(session, parent) if parent is not None else None
    return ModelSource(
        artifact.id,
        artifact.uri,
        tuple(artifact.inputs),
        chat_template(session, artifact),
        base,
    )


class Serving:
    """The control plane's model pool: ``engine_for`` loads (blocking) on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: EnginePool[Loaded] = EnginePool(settings.serve_models)

    def engine_for(self, source: ModelSource) -> Loaded:
        return self.pool.get(source.key, lambda: self._load(source))

    def _load(self, source: ModelSource) -> Loaded:
        from llm.serve.engine import Engine
        from llm.serve.model import batch_slots, load_registered

        served = load_registered(
            source.uri,
            tokenizer_uri=source.tokenizer_uri(),
            chat_template=source.chat_template,
            device=self.settings.serve_device,
            name=source.id,
        )
        engine = Engine(
            served.model,
            served.decode,
            eos_id=served.eos_id,
            max_batch=batch_slots(
                served.model, self.settings.serve_max_batch, self.settings.serve_cache_mb
            ),
            max_queue=self.settings.serve_max_queue,
            name=source.id,
        )
        log.info("serving model %s from %s (%d slots)", source.id, source.uri, engine.max_batch)
        return Loaded(served, engine)

    def close(self) -> None:
        self.pool.close()

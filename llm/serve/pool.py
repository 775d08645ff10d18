"""Engines by key, each model loaded once per process; past ``size``, the least recently used
idle engine is closed (a busy one is kept: closing it would fail its clients)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from llm.serve.engine import Engine
    from llm.serve.model import ServedModel


class Closable(Protocol):
    @property
    def busy(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class Loaded:
    """A served model and its engine: one pool entry (the control plane's and a replica's)."""

    served: ServedModel
    engine: Engine

    @property
    def busy(self) -> bool:
        return self.engine.busy

    def close(self) -> None:
        self.engine.close()


T = TypeVar("T", bound=Closable)
log = logging.getLogger("llmforge.serve")


class EnginePool(Generic[T]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an engine pool holds at least 1 engine, got {size}")
        self.size = size
        self._engines: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Callable[[], T]) -> T:
        """The engine for key, loading it with ``load`` on first use (once, even when several
        callers ask at the same time; other keys are served meanwhile)."""
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._engines:
                    return self._engines[key]
            engine = load()
            with self._lock:
                self._engines[key] = engine
                self._loading.pop(key, None)
                evicted = self._evict()
        for old in evicted:
            old.close()
        return engine

    def _evict(self) -> list[T]:
        evicted = []
        for key in list(self._engines)[:-1]:  # never the newest
            if len(self._engines) <= self.size:
                break
            if not self._engines[key].busy:
                log.info("closing the engine of %s (least recently used)", key)
                evicted.append(self._engines.pop(key))
        return evicted

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._engines)

    def items(self) -> list[tuple[str, T]]:
        with self._lock:
            return list(self._engines.items())

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()

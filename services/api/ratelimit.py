"""Per-key request rate limits: a token bucket for each API key, in this process.

Each key may make ``per_min`` requests a minute on average and as many in a burst; the key's
own ``rate_limit_per_min`` (set by an admin when creating it) overrides the setting
``LLMFORGE_RATE_LIMIT_PER_MIN``; 0 disables the limit. The buckets live in the control plane's
memory: with several replicas each one counts its own requests. Health, ``/metrics`` and the
metrics that jobs send (job tokens, not keys) are not limited.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._buckets: dict[str, tuple[float, float]] = {}  # key id: (tokens, last refill)
        self._lock = threading.Lock()

    def wait_s(self, key_id: str, per_min: int | None = None) -> int:
        """0 if the key may make a request now (and it is counted), else the whole seconds
        until it may."""
        limit = self.per_min if per_min is None else per_min
        if limit <= 0:
            return 0
        rate = limit / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(limit), now))
            tokens = min(float(limit), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0
            self._buckets[key_id] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))


class AuditThrottle:
    """How many refused requests of one kind from one caller (a key, or a client address when
    no valid key came) the audit log records: the first ``burst`` in each ``window_s``, then
    one row saying how many it left out. A flood of bad keys must not become a flood of rows."""

    def __init__(self, burst: int = 10, window_s: float = 60.0, max_callers: int = 10_000) -> None:
        self.burst, self.window_s, self.max_callers = burst, window_s, max_callers
        self._seen: dict[tuple[str, str], tuple[float, int, int]] = {}  # start, kept, left out
        self._lock = threading.Lock()

    def admit(self, action: str, caller: str) -> int | None:
        """None: leave this one out; else record it, with the count left out before it."""
        now = time.monotonic()
        with self._lock:
            if len(self._seen) >= self.max_callers:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
            start, kept, left_out = self._seen.get((action, caller), (now, 0, 0))
            if now - start >= self.window_s:
                start, kept = now, 0
            if kept >= self.burst:
                self._seen[(action, caller)] = (start, kept, left_out + 1)
                return None
            self._seen[(action, caller)] = (start, kept + 1, 0)
            return left_out

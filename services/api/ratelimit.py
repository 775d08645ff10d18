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

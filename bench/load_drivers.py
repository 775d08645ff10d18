"""Load drivers for HTTP benches: closed-loop clients and an open-loop arrival clock.

Closed loop: N clients, each sends its next request when the last one answers; the rate is what
the server allows, and latency grows with N (a queue of N). Open loop: requests are scheduled on
a clock at a fixed rate whatever the server does, and each one's latency runs from its
*scheduled* send time, so a server (or a client) that falls behind shows up in the latency
instead of slowing the arrivals down ("coordinated omission").

aiohttp rather than httpx: it costs the client about a third of the CPU per request, and on a
2-core machine the client shares the cores with the server it measures (``client_cpu_share``
says how much it took).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

# A call sends one request and answers the units it carried (1, or the points of a batch).
Call = Callable[[aiohttp.ClientSession], Awaitable[int]]
TIMEOUT_S = 10.0


@dataclass
class Outcome:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0  # filled in by a caller that can see the server's processes

    def add(self, name: str, latency: float, units: int, ok: bool) -> None:
        self.latencies.setdefault(name, []).append(latency)
        self.units[name] = self.units.get(name, 0) + units
        if not ok:
            self.errors[name] = self.errors.get(name, 0) + 1

    def p(self, names: Sequence[str], q: int) -> float:
        """The q-th percentile (ms) over the named calls; a failed call counts as the timeout."""
        lat = [x for n in names for x in self.latencies.get(n, [])]
        if len(lat) < 2:
            return float("nan")
        return statistics.quantiles(lat, n=100)[q - 1] * 1e3

    def error_count(self, names: Sequence[str]) -> int:
        return sum(self.errors.get(n, 0) for n in names)

    def server_cpu_ms_per_call(self, names: Sequence[str]) -> float:
        """The server's CPU time per answered call: what a request costs, whatever share of the
        cores the server got while others loaded the machine."""
        answered = sum(len(self.latencies.get(n, [])) - self.errors.get(n, 0) for n in names)
        return self.server_cpu_s * 1e3 / answered if answered else float("nan")

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU-seconds per wall second (1.0: one core, all the time)."""
        return self.client_cpu_s / self.seconds if self.seconds else 0.0


def _session(base_url: str, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )


async def _timed(
    call: Call, session: aiohttp.ClientSession, since: float
) -> tuple[float, int, bool]:
    """(seconds from ``since`` to the answer, units, ok). A failure costs the whole timeout, so
    dropped requests cannot improve a percentile."""
    try:
        units = await call(session)
        return time.perf_counter() - since, units, True
    except (aiohttp.ClientError, TimeoutError):
        return max(TIMEOUT_S, time.perf_counter() - since), 0, False


async def closed_loop(base_url: str, call: Call, *, clients: int, seconds: float) -> Outcome:
    out = Outcome()
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            latency, units, ok = await _timed(call, session, time.perf_counter())
            out.add("call", latency, units, ok)

    cpu, wall = time.process_time(), time.perf_counter()
    async with _session(base_url, clients) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    out.seconds, out.client_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return out


async def open_loop(
    base_url: str,
    mix: Sequence[tuple[str, float, Call]],
    *,
    rate: float,
    seconds: float,
    seed: int = 0,
) -> Outcome:
    """Requests at ``rate`` per second for ``seconds``, each drawn from ``mix`` (name, weight,
    call) and sent at its scheduled time, however many are still unanswered."""
    rng = random.Random(seed)
    names, weights, calls = zip(*mix, strict=True)
    picks = rng.choices(range(len(mix)), weights=weights, k=int(rate * seconds))
    out = Outcome()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        latency, units, ok = await _timed(calls[i], session, scheduled)
        out.add(names[i], latency, units, ok)

    cpu = time.process_time()
    async with _session(base_url, 0) as session:  # 0: no cap, an open loop never waits for one
        start = time.perf_counter() + 0.05
        for n, i in enumerate(picks):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        out.seconds = time.perf_counter() - start
    out.client_cpu_s = time.process_time() - cpu
    return out

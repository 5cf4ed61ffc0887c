"""Backpressure for an endpoint: adaptive concurrency (AIMD) per replica, and rpm/tpm buckets."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

from workbench.llm.types import Request

log = logging.getLogger(__name__)


_RETRY_STATUS = {408, 409, 425, 429} | set(range(500, 600))


class _Concurrency:
    """Requests in flight on one endpoint replica, adapted to its latency (AIMD).

    Latencies of answered requests are taken in windows of about one round (`limit` answers, at
    least 8). A window whose median is above `tolerance` times the lowest window median seen is
    congestion: the limit is multiplied by 0.7, and requests sent before the cut are not counted
    in the next window (they measure the old limit). Any other window adds 1,
    up to `ceiling`. Workers whose number is at or above the limit wait, so a lowered limit takes
    effect as requests finish. A server that is already overloaded when the run starts looks
    normal to it: the lowest latency seen is its yardstick."""

    def __init__(self, ceiling: int, tolerance: float, adaptive: bool):
        self.ceiling, self.tolerance, self.adaptive = ceiling, tolerance, adaptive
        self.limit = float(ceiling)
        self.base: float | None = None
        self.window: list[float] = []
        self.trace: list[tuple[float, int, float]] = []  # (time, limit, window median): tests and reports
        self.cut_at = 0.0
        self.wake = asyncio.Event()

    def allows(self, k: int) -> bool:
        return k < int(self.limit)

    def sample(self, sent: float, now: float) -> None:
        """A request sent at `sent` ended (answered or timed out) at `now` (the loop's clock)."""
        if not self.adaptive or sent < self.cut_at:
            return
        self.window.append(now - sent)
        if len(self.window) < max(8, int(self.limit)):
            return
        w = sorted(self.window)
        median = w[len(w) // 2]
        self.window.clear()
        self.base = median if self.base is None else min(self.base, median)
        if median > self.tolerance * self.base:
            self.limit = max(1.0, self.limit * 0.7)
            self.cut_at = now
            log.info("endpoint latency %.3fs is %.1fx the lowest seen: %d requests in flight at most",
                     median, median / self.base, int(self.limit))  # fmt: skip
        elif self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1)
            self.wake.set()
        self.trace.append((time.monotonic(), int(self.limit), median))


class _Rate:
    """Requests or tokens per minute: a bucket refilled at limit/61 a second that holds at most
    limit/61, so any 60-second window stays within the limit (and any second within 1/61 of it,
    as providers that enforce a minute's limit per second do). A request that costs more than the
    bucket holds waits for a full bucket and leaves it in debt."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 61
        self.capacity = self.rate
        self.level = self.capacity
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, cost: float) -> None:
        async with self.lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
                self.t = now
                need = min(cost, self.capacity)
                if self.level >= need:
                    self.level -= cost
                    return
                await asyncio.sleep((need - self.level) / self.rate)


def _token_cost(req: Request) -> int:
    """Tokens a request counts against a tokens-per-minute limit: its prompt at about 4 characters
    a token, plus max_tokens for each of its n completions."""
    return sum(len(c) for _, c in req.messages) // 4 + req.max_tokens * req.n


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time()) if when else None

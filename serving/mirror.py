"""Mirrored traffic: copies of live requests sent to a deployment, their answers discarded (``--mirror``,
beside the traffic split of SPEC §9.3, which has no mirror), with a bound on the copies awaiting an answer.

A mirror is a deployment under test; it may be slower than the live traffic, or stuck. Unbounded, its
unanswered copies would pile up in the router (memory, Serve handle queues) and compete with the live
requests. So at most ``max_in_flight`` copies are unanswered at a time; a copy beyond that is dropped at
once, never queued, and the live request it came from is not affected. Drops are counted (the endpoint's
``GET /status``) and logged, at most once a minute, with the totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

logger = logging.getLogger("ray.serve")


class Mirror:
    """The copies sent to one mirror deployment.

    Counters: ``copies`` chosen for mirroring; ``mirrored`` sent; ``dropped`` not sent because
    ``max_in_flight`` copies were unanswered (``dropped == copies - mirrored``); ``failed`` sent copies
    that raised (answers, error answers included, are discarded).
    """

    def __init__(self, name: str, max_in_flight: int, log_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_in_flight < 1:
            raise ValueError(f"mirror {name}: max_in_flight must be at least 1, but got {max_in_flight}")
        self.name, self.max_in_flight = name, max_in_flight
        self.copies = self.mirrored = self.dropped = self.failed = 0
        self._in_flight: set[asyncio.Future] = set()
        self._log_every_s, self._clock, self._logged_at = log_every_s, clock, None

    def send(self, call: Callable[[], Awaitable[Any]]) -> bool:
        """Send one copy (``call()`` starts it) unless the mirror is full; returns whether it was sent.
        Never waits: it runs on the live request's path."""
        self.copies += 1
        if len(self._in_flight) >= self.max_in_flight:
            self.dropped += 1
            self._log_drops()
            return False
        future = asyncio.ensure_future(call())
        self.mirrored += 1
        self._in_flight.add(future)
        future.add_done_callback(self._answered)
        return True

    def _answered(self, future: asyncio.Future) -> None:
        self._in_flight.discard(future)
        if future.cancelled() or future.exception() is not None:  # retrieved, so asyncio does not warn
            self.failed += 1

    def _log_drops(self) -> None:
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self._log_every_s:
            self._logged_at = now
            logger.warning("mirror %s: %d of %d copies dropped so far (%d unanswered, at most %d); the live "
                           "requests are not affected", self.name, self.dropped, self.copies,
                           len(self._in_flight), self.max_in_flight)

    def stats(self) -> dict[str, int]:
        return {"copies": self.copies, "mirrored": self.mirrored, "dropped": self.dropped, "failed": self.failed,
                "in_flight": len(self._in_flight), "max_in_flight": self.max_in_flight}

"""Readiness as the managed service's probes define it (SPEC §9.3), as a small state machine.

A deployment is not ready before ``initial_delay`` (milliseconds) has passed since it started; after
that it becomes ready after ``success_threshold`` consecutive successful checks and stops being ready
after ``failure_threshold`` consecutive failures. A check slower than ``timeout`` seconds is a failure.
Checks are made at most every ``period`` seconds; in between, the last answer holds.
"""

from __future__ import annotations

import time
from typing import Callable


class ProbeState:
    def __init__(self, failure_threshold: int = 10, success_threshold: int = 1, timeout: float = 10,
                 period: float = 10, initial_delay: float = 0, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold, self.success_threshold = failure_threshold, success_threshold
        self.timeout, self.period, self.initial_delay_s = timeout, period, initial_delay / 1000.0
        self.clock = clock
        self.started = clock()
        self.ready = False
        self._successes = self._failures = 0
        self._last_check: float | None = None
        self.reason = "starting"

    def due(self) -> bool:
        now = self.clock()
        if now - self.started < self.initial_delay_s:
            return False
        return self._last_check is None or now - self._last_check >= self.period

    def record(self, ok: bool, elapsed_s: float = 0.0, reason: str = "") -> bool:
        """Record one check's outcome; returns the readiness after it."""
        self._last_check = self.clock()
        ok = ok and elapsed_s <= self.timeout
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= self.success_threshold:
                self.ready, self.reason = True, "ready"
        else:
            self._failures, self._successes = self._failures + 1, 0
            self.reason = reason or ("timed out" if elapsed_s > self.timeout else "check failed")
            # Before the first success a failing deployment is simply not ready yet.
            if self._failures >= self.failure_threshold or not self.ready:
                self.ready = False
        return self.ready

"""Readiness as the managed service's probes define it (SPEC §9.3), as a small state machine.

A deployment is not ready before ``initial_delay`` (milliseconds) has passed since its replica started;
after that it becomes ready after ``success_threshold`` consecutive successful checks and stops being ready
after ``failure_threshold`` consecutive failures. A check slower than ``timeout`` seconds is a failure.
Checks are made at most every ``period`` seconds; in between, the last answer holds.

The replica's start is the one its checks report (``uptime_s``), not the router's: an endpoint's router is
replaced whenever a deployment is added or removed, and its new probes must not hold every deployment that
has long been running out of traffic for another ``initial_delay``. Until a check has reported it, the
start is unknown and a check is due at once; a check made within the delay counts for nothing.

Liveness (:class:`Liveness`) rides on Serve's replica health check: Serve calls the replica's ``check_health``
every ``period`` seconds and restarts the replica after :data:`SERVE_RESTARTS_AFTER` failed calls in a row, a
constant of Serve, not a setting. The replica's own check (``serving.app``) therefore counts its failures itself and
fails Serve's call only from the ``failure_threshold - 2``-th on, so that Serve's restart comes at the
``failure_threshold``-th failed check (at the 3rd at the earliest: Serve's count); no check counts within
``initial_delay`` of the replica's start; and once failing, the replica counts as alive again only after
``success_threshold`` good checks in a row (until then Serve's calls keep failing).
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
        self.started: float | None = None  # the replica's start on our clock, once a check has reported it
        self.ready = False
        self._successes = self._failures = 0
        self._last_check: float | None = None
        self.reason = "starting"

    def _delayed(self, now: float) -> bool:
        return self.started is not None and now - self.started < self.initial_delay_s

    def due(self) -> bool:
        now = self.clock()
        if self._delayed(now):
            return False
        return self._last_check is None or now - self._last_check >= self.period

    def record(self, ok: bool, elapsed_s: float = 0.0, reason: str = "", uptime_s: float | None = None) -> bool:
        """Record one check's outcome (``uptime_s``: how long the replica that answered has been up); returns
        the readiness after it."""
        now = self._last_check = self.clock()
        if uptime_s is not None:
            self.started = now - uptime_s
        if self._delayed(now):  # within initial_delay: not ready, and the check does not count
            self.ready, self.reason, self._successes, self._failures = False, "starting", 0, 0
            return self.ready
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


SERVE_RESTARTS_AFTER = 3  # Serve restarts a replica after this many failed health checks in a row (Ray 2.60)


class Liveness:
    """The liveness probe's count, inside the replica: :meth:`record` takes one check's outcome and says whether
    Serve's health check should pass (see the module's docstring for why it fails before ``failure_threshold``)."""

    def __init__(self, failure_threshold: int = 30, success_threshold: int = 1, initial_delay: float = 0,
                 clock: Callable[[], float] = time.monotonic, **_ignored):
        self.failure_threshold, self.success_threshold = failure_threshold, success_threshold
        self.initial_delay_s = initial_delay / 1000.0
        self.clock = clock
        self.started = clock()
        self.failures = self.successes = 0

    @property
    def failing_from(self) -> int:
        """The failed check from which Serve's calls fail: Serve's own count then ends at ``failure_threshold``."""
        return max(1, self.failure_threshold - (SERVE_RESTARTS_AFTER - 1))

    def record(self, ok: bool) -> bool:
        if self.clock() - self.started < self.initial_delay_s:
            return True  # starting: no check counts yet
        if ok:
            self.successes += 1
            if self.successes >= self.success_threshold:
                self.failures = 0
        else:
            self.failures, self.successes = self.failures + 1, 0
        return self.failures < self.failing_from

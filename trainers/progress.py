"""Progress of long steps, on stderr: downloads into the node cache, weights fetches, the image check, ONNX export.

Why: these steps can take minutes and used to print nothing until they ended, which reads as a hang. Why not tqdm:
its output is a terminal widget, and most of ours does not go to a terminal. Trials run in Ray workers whose
stderr reaches the driver's terminal line by line with a prefix, and ``ray job logs`` / log files keep every
byte; a bar redrawn with ``\\r`` ten times a second there is thousands of garbage lines. So there are two modes,
picked by ``stream.isatty()``:

* **a terminal**: one line redrawn in place (``\\r``), at most :data:`TTY_REDRAW_S` apart: the count (of a total
  when known), bytes in human units, the rate and the time left;
* **anything else** (a pipe, a log file, a Ray worker): the same line as a plain full line at most every
  ``VISIONSWEEP_PROGRESS_S`` seconds (default :data:`DEFAULT_PERIOD_S`), then one final line with the total and
  the time taken.

Work that ends within :data:`QUIET_S` prints nothing at all, the final line included: a sweep over a tiny
dataset must not fill its log with "0.01s" lines. ``VISIONSWEEP_PROGRESS_S=0`` prints every update, without
that grace (for tests and for debugging a slow step).

Updates come from thread pools (downloads, header probes), so :meth:`Progress.update` takes a lock; it costs
about a microsecond when nothing is printed, so it may be called per image. The clock is a parameter, so tests
drive time instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Iterator, Literal, TextIO

PERIOD_ENV = "VISIONSWEEP_PROGRESS_S"
DEFAULT_PERIOD_S = 10.0  # between plain lines when not on a terminal (log volume, not freshness, is what matters)
TTY_REDRAW_S = 0.1  # between redraws on a terminal: faster is invisible and costs a write per update
QUIET_S = 1.0  # work shorter than this prints nothing


def human_size(n: float) -> str:
    """Bytes in binary units with two decimals (``12.30 MiB``); below 1 KiB, ``N bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} bytes"


def human_duration(s: float) -> str:
    """``4.2s``, ``41s``, ``12m05s``, ``2h03m``: short enough for a progress line."""
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}m{sec:02d}s"
    h, m = divmod(int(round(s)) // 60, 60)
    return f"{h}h{m:02d}m"


def configured_period_s() -> float:
    """The plain-line period from ``$VISIONSWEEP_PROGRESS_S`` (default :data:`DEFAULT_PERIOD_S`). A value that is
    not a non-negative number falls back to the default: a progress setting must never fail a job."""
    text = os.environ.get(PERIOD_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_PERIOD_S
    except ValueError:
        return DEFAULT_PERIOD_S
    return value if value >= 0 else DEFAULT_PERIOD_S


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _rate(n: float, unit: str) -> str:
    if unit == "bytes":
        return f"{human_size(n)}/s"
    return f"{n:.1f}/s" if n < 10 else f"{n:.0f}/s"


class Progress:
    """Progress of one counted step; a context manager (``with Progress(...) as p: ... p.update(1)``).

    ``total`` is the count expected (``None`` when unknown: no percentage, no ETA). ``unit`` says what is
    counted: ``"items"`` (images, files) or ``"bytes"`` (shown in human units). A step that counts items may
    also report the bytes they carried (``update(1, nbytes=len(data))``): the line then shows both.
    ``period_s`` and ``quiet_s`` default to ``$VISIONSWEEP_PROGRESS_S`` and :data:`QUIET_S`.
    """

    def __init__(self, what: str, total: int | None = None, unit: Literal["items", "bytes"] = "items",
                 stream: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic,
                 period_s: float | None = None, quiet_s: float | None = None):
        if unit not in ("items", "bytes"):
            raise ValueError(f"unit: expected 'items' or 'bytes', but got {unit!r}")
        self.what, self.total, self.unit = what, total, unit
        self.stream = sys.stderr if stream is None else stream  # resolved now: pytest and Ray swap sys.stderr
        self.tty = _isatty(self.stream)
        self.clock = clock
        self.period_s = configured_period_s() if period_s is None else float(period_s)
        # the grace never exceeds the period: a period of 0 asks for every update
        self.quiet_s = min(QUIET_S if quiet_s is None else float(quiet_s), self.period_s)
        self.count = 0
        self.nbytes = 0  # bytes carried by counted items (unit "items"); unit "bytes" counts them in count
        self.start = clock()
        self._last: float | None = None  # when a line was last written
        self._width = 0  # of the last terminal line, to blank what a shorter redraw leaves behind
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        """Count ``n`` more (and ``nbytes`` carried by them); print if a line is due. Safe from any thread."""
        with self._lock:
            self.count += n
            self.nbytes += nbytes
            if self._closed:
                return
            now = self.clock()
            elapsed = now - self.start
            if elapsed < self.quiet_s:
                return
            if self.tty:
                due = self._last is None or now - self._last >= TTY_REDRAW_S
            elif self.total and self.count >= self.total:
                due = False  # the final line follows, with the time taken: a "100%" line before it is noise
            else:  # the first plain line one period in: a step shorter than that logs its final line only
                due = now - (self.start if self._last is None else self._last) >= self.period_s
            if due:
                self._write(self._line(elapsed), now)

    def reset(self) -> None:
        """Count from zero again (a retried transfer starts over); the clock and the lines already printed stay."""
        with self._lock:
            self.count = self.nbytes = 0

    def close(self, failed: bool = False) -> None:
        """The final line (the total and the time taken), unless the step was short and printed nothing.
        Idempotent; ``failed`` (an exception left the ``with``) says where it stopped instead."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = self.clock()
            elapsed = now - self.start
            if self._last is None and elapsed < self.quiet_s:
                return
            self._write(self._final(elapsed, failed), now)
            if self.tty:
                self._emit("\n")

    # ------------------------------------------------------------------ formatting

    def _amount(self, n: float) -> str:
        return human_size(n) if self.unit == "bytes" else str(int(n))

    def _line(self, elapsed: float) -> str:
        parts = [self._amount(self.count)
                 + (f"/{self._amount(self.total)} ({100 * self.count / self.total:.0f}%)" if self.total else "")]
        if self.nbytes:
            parts.append(human_size(self.nbytes))
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if elapsed > 0:
            carried = f" ({_rate(self.nbytes / elapsed, 'bytes')})" if self.nbytes else ""
            parts.append(_rate(rate, self.unit) + carried)
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"ETA {human_duration((self.total - self.count) / rate)}")
        return f"{self.what}: " + ", ".join(parts)

    def _final(self, elapsed: float, failed: bool) -> str:
        done = self._amount(self.count) + (f"/{self._amount(self.total)}" if self.total else "")
        carried = f" ({human_size(self.nbytes)})" if self.nbytes else ""
        rate = f", {_rate(self.count / elapsed, self.unit)}" if elapsed > 0 and self.count else ""
        if failed:
            return f"{self.what}: stopped at {done}{carried} after {human_duration(elapsed)}"
        return f"{self.what}: {done}{carried} done in {human_duration(elapsed)}{rate}"

    def _write(self, line: str, now: float) -> None:
        """Under the lock: a redraw on a terminal, a full line elsewhere."""
        if self.tty:
            pad = max(0, self._width - len(line))
            self._width = len(line)
            self._emit("\r" + line + " " * pad)
        else:
            self._emit(line + "\n")
        self._last = now

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is never worth failing the work
            pass


@contextlib.contextmanager
def phase(what: str, stream: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic,
          quiet_s: float | None = None) -> Iterator[None]:
    """A step with nothing to count (tracing a model for ONNX, checking it with onnxruntime): ``what ...`` once the
    step has lasted ``quiet_s`` (default :data:`QUIET_S`, at most ``$VISIONSWEEP_PROGRESS_S``), then
    ``what: done in 12s`` when it ends; nothing for a step shorter than that.

    The first line is printed by a timer thread, because the step itself (a call into torch) cannot be asked to
    report: that is what tells a user the export is alive during a minute of tracing.
    """
    out = sys.stderr if stream is None else stream
    quiet = min(QUIET_S if quiet_s is None else float(quiet_s), configured_period_s())
    start = clock()
    lock = threading.Lock()
    state = {"started": False, "ended": False}

    def announce() -> None:
        with lock:
            if not state["ended"]:
                state["started"] = True
                _emit_line(out, f"{what} ...")

    timer = None
    if quiet <= 0:
        announce()
    else:
        timer = threading.Timer(quiet, announce)
        timer.daemon = True
        timer.start()
    failed = True
    try:
        yield
        failed = False
    finally:
        if timer is not None:
            timer.cancel()
        with lock:
            state["ended"] = True
            if state["started"]:
                took = human_duration(clock() - start)
                _emit_line(out, f"{what}: failed after {took}" if failed else f"{what}: done in {took}")


def _emit_line(stream, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass

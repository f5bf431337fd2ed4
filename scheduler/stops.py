"""One way for a sweep to be stopped from outside: Ctrl-C (SIGINT), SIGTERM (Kubernetes, Slurm, ``ray job stop``).

Both end ``run`` and ``resume`` the same way. Before the sweep starts (data, weights, the cluster's start, AutoMode's
cost probe) a signal ends the command at once (:class:`Cancelled`). Once Ray Tune runs the trials, the first signal
asks Tune to stop the way its own Ctrl-C does, which keeps what a resume needs: Tune's experiment state is written
one last time and the trials still running stay unfinished in it (each goes on from its last checkpoint, taken at
every evaluation). The controller then marks those trials ``cancelled`` (not finished, not stopped by a policy),
exports only trials that finished, ends the MLflow runs as KILLED, says ``visionsweep resume RUN`` and exits with
128 + the signal (130, 143). A second signal ends the command at once.

Why not Tune's own handler: it handles SIGINT only (SIGTERM reaches Ray's own handler in the driver, which dumps a
native stack and aborts), returns from ``fit`` as if the sweep had ended, and prints ``Tuner.restore`` hints for a
Python API the user of this command never sees. Tune's SIGUSR1 handler (installed by ``fit`` whatever the
environment) is the entry point used here to ask for that graceful stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What Tune logs around an interrupted fit(): its own hints, for its own API. The controller says what to do.
_TUNE_NOISE = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted",
               "Trials did not complete")


class Cancelled(KeyboardInterrupt):
    """The command was stopped by a signal. A ``KeyboardInterrupt`` (what Ctrl-C raises in Python) that knows its
    signal: the command line exits with :attr:`exit_code`, 128 + the signal, as a shell reports it."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum
        self.detailed = bool(message)  # the message says what is kept and how to go on: the command's last line

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """SIGINT and SIGTERM handlers for one command (a context manager; the main thread only, else it does
    nothing: signals reach the main thread only).

    ``signum`` is the first signal received. Inside :meth:`sweep` the first signal asks Tune for a graceful stop;
    elsewhere, or for a second signal, the handler raises :class:`Cancelled`."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._in_sweep = False
        self._active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "StopSignals":
        if self._active:
            for s in STOP_SIGNALS:
                self._previous[s] = signal.getsignal(s)
        self.arm()
        return self

    def __exit__(self, *exc) -> None:
        if self._active:
            for s, h in self._previous.items():
                signal.signal(s, h)

    def arm(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces the SIGTERM handler with its own."""
        if self._active:
            for s in STOP_SIGNALS:
                signal.signal(s, self._on_signal)

    @property
    def cancelled(self) -> Cancelled | None:
        return Cancelled(self.signum) if self.signum is not None else None

    def _on_signal(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self._in_sweep:
            tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's graceful stop (see the module's docstring)
            if callable(tune_stop):
                tune_stop(signum, frame)
                return
        raise Cancelled(signum)

    @contextlib.contextmanager
    def sweep(self) -> Iterator[None]:
        """Around ``Tuner.fit``: the first signal stops Tune gracefully; Tune's own SIGINT handler and its
        hints stay out of the way."""
        saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        quiet = _DropTuneHints()
        tune_log = logging.getLogger("ray.tune.tune")
        tune_log.addFilter(quiet)
        self.arm()
        self._in_sweep = True
        try:
            yield
        finally:
            self._in_sweep = False
            tune_log.removeFilter(quiet)
            if saved is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved


class _DropTuneHints(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_NOISE)

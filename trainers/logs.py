"""``log_verbosity`` (§14): it governs visionsweep's own loggers, in the controller and in every trial
process, and nothing else. Storage SDKs and other libraries stay at WARNING: at ``debug`` the Azure SDK
alone logs every HTTP request of every image (the service's published job files all set ``debug``)."""

from __future__ import annotations

import logging
import threading

LEVELS = {"not_set": logging.WARNING, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
OWN_LOGGERS = ("scheduler", "trainers", "serving", "cluster")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def set_verbosity(level: str) -> None:
    """visionsweep's loggers at ``level``; the root logger is never changed here (the CLI sets it, once,
    to WARNING)."""
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(LEVELS[level])


def apply_in_worker(level: str) -> None:
    """A trial process (a Ray worker): the job's verbosity for visionsweep's loggers, and a stderr handler
    on the root logger when it has none, so their records reach the worker's log (Python's fallback
    handler would drop everything below WARNING). The root logger's own level stays as it is."""
    set_verbosity(level)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)


LOG_CAP_BYTES = 2 * 2**20  # a trial's log.txt keeps its first 2 MiB: a loop that warns every step fills no disk


class TrialOutput(logging.Handler):
    """What a trial prints while it trains — ``print``, warnings, tracebacks it logs, and the records of every
    logger — kept so that each evaluation can carry it to the driver (``take``), which appends it to the trial's
    ``log.txt`` in the run folder. Carried with the reports, a trial's log reaches the run folder from any node of
    the cluster, where Ray's own session logs stay on the node that ran it.

    A context manager: inside it ``sys.stdout`` and ``sys.stderr`` are tees (the process's own output goes on as
    before, to Ray's worker log) and the root logger has this handler."""

    def __init__(self, level: str = "info"):
        super().__init__(LEVELS.get(level, logging.INFO))
        self.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
        self._chunks: list[str] = []
        self._size = 0
        self._lock_chunks = threading.Lock()
        self._saved: tuple | None = None

    def _add(self, text: str) -> None:
        if not text:
            return
        with self._lock_chunks:
            if self._size >= LOG_CAP_BYTES:
                return
            self._size += len(text)
            self._chunks.append(text)
            if self._size >= LOG_CAP_BYTES:
                self._chunks.append(f"\n[log.txt keeps the first {LOG_CAP_BYTES // 2**20} MiB of the trial's output]\n")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._add(self.format(record) + "\n")
        except Exception:  # a record that cannot be formatted is not worth a failed trial
            pass

    def take(self) -> str:
        """What was printed since the last call."""
        with self._lock_chunks:
            text, self._chunks = "".join(self._chunks), []
        return text

    def __enter__(self) -> "TrialOutput":
        import sys

        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self._add), _Tee(sys.stderr, self._add)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        import sys

        logging.getLogger().removeHandler(self)
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved


class _Tee:
    """A text stream that writes through to ``stream`` and hands a copy of each write to ``copy``."""

    def __init__(self, stream, copy):
        self._stream, self._copy = stream, copy

    def write(self, s: str) -> int:
        self._copy(s)
        return self._stream.write(s)

    def __getattr__(self, name):  # flush, fileno, isatty, encoding ...: the real stream's
        return getattr(self._stream, name)

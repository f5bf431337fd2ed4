"""``log_verbosity`` (§3.1): it governs visionsweep's own loggers, in the controller and in every trial
process, and nothing else. Storage SDKs and other libraries stay at WARNING: at ``debug`` the Azure SDK
alone logs every HTTP request of every image (the service's published job files all set ``debug``)."""

from __future__ import annotations

import logging

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

"""What a running job logs: its ``log_verbosity`` for visionsweep's loggers (:mod:`trainers.logs`) and its
credentials as ``***`` in every log record and line printed (:func:`scheduler.spec.redact`). Applied by the
controller for every path that runs a job (run, resume, demo); the CLI puts the filter on its handlers."""

from __future__ import annotations

import logging
import os

from scheduler.spec.redact import redact
from trainers.logs import FORMAT, set_verbosity


class RedactingFilter(logging.Filter):
    """Log records with credentials as ``***``: those of the jobs seen (:meth:`add`) and any inside URLs."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secrets) -> None:
        self.secrets.update(secrets)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


REDACTION = RedactingFilter()


def apply_job_logging(job) -> None:
    """A job's ``log_verbosity`` and credentials, for every path that runs it (run, resume, demo)."""
    set_verbosity(job.spec.log_verbosity)
    REDACTION.add(job.secrets())


def process_defaults() -> None:
    """Logging (warnings to stderr, credentials as ``***`` in every record) and Ray settings of a process that runs
    sweeps: the CLI, and ``visionsweep.run`` in a notebook."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)  # a no-op where the process set up its own logging
    for handler in logging.getLogger().handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the sweep's state often: `visionsweep resume` can only continue from the last snapshot.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")

"""What every command shares: where its lines go (stdout for results, stderr for the rest, credentials as
``***``), and the parsing of ``--setting NAME=VALUE``."""

from __future__ import annotations

import contextlib
import os
import sys

import yaml

from scheduler.joblog import REDACTION
from trainers.errors import VisionsweepError


def echo(s: str) -> None:
    """A progress line: stderr, credentials as ``***``."""
    print(REDACTION.redact(s), file=sys.stderr, flush=True)


def print_notes(job, prefix: str = "", file=None) -> None:
    for note in job.notes():
        print(f"{prefix}note: {note}", file=file)
    for warning in job.warnings():
        print(f"{prefix}warning: {warning}", file=file)


@contextlib.contextmanager
def stdout_to_stderr():
    """Everything written to stdout inside the block goes to stderr: the file descriptor (C code, subprocesses)
    and ``sys.stdout`` (prints, and loggers created inside the block, such as mmengine's, which binds the stream
    it finds). Commands that print JSON run their libraries in it, so that stdout carries their JSON only."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_settings(pairs: list[str] | None) -> dict[str, object]:
    """``--setting name=value`` inference-setting overrides (§9.5); values are read as YAML scalars."""
    out: dict[str, object] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise VisionsweepError(f"--setting {pair!r}: expected NAME=VALUE, e.g. box_score_threshold=0.5")
        out[name.strip()] = yaml.safe_load(value)
    return out

"""Where a trial stages a checkpoint before Ray persists it, and how what a killed trial left there is reclaimed.

A checkpoint is written to a local temporary folder, handed to ``tune.report`` (which copies it to the run's
storage) and removed when ``report`` returns. But a trial that an early-termination policy stops is blocked
inside that ``report`` when Tune ends its process, so the folder is never removed: about one package (tens to
hundreds of MB) per stopped trial, on every node, for the life of the machine. The folders therefore carry
the pid of the process that made them, and every trial starting on a node first removes those whose process
is gone (as the node cache does with its temporary files). No library does this: Ray leaves the caller's
temporary folders to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainers.processes import pid_alive

log = logging.getLogger(__name__)

PREFIX = "visionsweep-ckpt-"
_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def reclaim(root: str | os.PathLike | None = None) -> int:
    """Remove the staging folders under ``root`` (the system's temporary folder) whose process has ended;
    returns how many were removed."""
    removed = 0
    base = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            m = _OWNED.match(entry.name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed += not entry.exists()
    if removed:
        log.debug("removed %d checkpoint staging folder(s) left by ended trials", removed)
    return removed


@contextlib.contextmanager
def staging_dir(root: str | os.PathLike | None = None) -> Iterator[str]:
    """A temporary folder named for this process, removed on exit (or by :func:`reclaim` if the process dies)."""
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=root) as d:
        yield d

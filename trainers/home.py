"""visionsweep's own folder on this machine: ``$VISIONSWEEP_HOME``, default ``~/.visionsweep``.

One place for the default, so that the Python API's jobs (``visionsweep.jobs``: ``HOME/jobs/NAME``) and the
endpoints' state of an older visionsweep (``serving.endpoints``: ``HOME/endpoints``) can never disagree about it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "VISIONSWEEP_HOME"


def visionsweep_home() -> Path:
    """``$VISIONSWEEP_HOME`` when set, else ``~/.visionsweep`` (read at each call: tests and operators set it late)."""
    return Path(os.environ.get(ENV, Path.home() / ".visionsweep"))

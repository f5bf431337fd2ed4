"""Whether a process still runs, for the files and folders that carry their writer's pid (the node cache's
temporary files, checkpoint staging folders, jobs started by ``MLClient``) and are reclaimed once it has ended."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True

"""``visionsweep check-data JOB.yml``: a job's data prepared as ``run`` prepares it (the same train/validation split,
the same datastores and images) and checked on Ray (``RAY_ADDRESS``, or an embedded local Ray), without a sweep."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable


def check_job_data(job: Any, level: str = "standard", echo: Callable[[str], None] | None = None,
                   datastores: str | None = None, data_assets: str | None = None,
                   release_ray: bool = True) -> dict[str, Any]:
    """The findings of ``job``'s data at ``level``; ``release_ray``: an embedded Ray this call starts is shut down
    after (a command; a notebook keeps it)."""
    from cluster.connect import connect
    from scheduler.stages.prepare import prepare_job_data
    from scheduler.stops import StopSignals

    echo = echo or (lambda s: None)
    with tempfile.TemporaryDirectory(prefix="visionsweep-check-data-") as tmp:
        data = prepare_job_data(job, Path(tmp), datastores, data_assets)
    echo(f"data: {len(data.train)} training / {len(data.valid)} validation images, {len(data.classes)} classes")
    with StopSignals() as stops:  # Ctrl-C and SIGTERM end the check with 130/143, as they end run
        echo(f"ray: {connect()}")
        stops.arm()  # ray.init replaced the SIGTERM handler with its own (a stack dump, exit 15)
        return _checked(job, data, level, echo, release_ray)


def _checked(job: Any, data: Any, level: str, echo: Callable[[str], None], release_ray: bool) -> dict[str, Any]:
    from cluster.connect import release_embedded
    from scheduler import data_check
    from scheduler.preflight import weights_config

    try:
        return data_check.check_data(data.task, data.train, data.valid, data.classes, data.store, level,
                                     job.training_parameters.get("tile_grid_size"), echo=echo,
                                     weights_cfg=weights_config(job))
    finally:
        if release_ray:
            release_embedded()

"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, else an embedded local one."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(num_cpus: int | None = None) -> str:
    """Initialise Ray once per process; returns a description of the cluster."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level=logging.WARNING)
    res = ray.cluster_resources()
    return f"{len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))

"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, else an embedded local one."""

from __future__ import annotations

import contextlib
import json
import logging
import os

log = logging.getLogger(__name__)
_embedded = False  # this process started the Ray it is connected to (no RAY_ADDRESS, not initialised before)


def connect(num_cpus: int | None = None, dashboard: bool = False) -> str:
    """Initialise Ray once per process; returns a description of the cluster.

    ``dashboard``: an embedded Ray starts its dashboard too; data-parallel trials need it (Ray Train
    frees the workers of a stopped trial through the state API it serves).
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env=_address_env(address))
        else:
            # An embedded Ray lives and dies with this command and its token never leaves the machine: Ray's notice
            # that token authentication is on (printed at every start) tells its user nothing to act on.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            with _processes_apart():
                ray.init(num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False,
                         configure_logging=True, logging_level=logging.WARNING)
            global _embedded
            _embedded = True
    res = ray.cluster_resources()
    return f"{len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"


def release_embedded() -> bool:
    """Shut down the embedded Ray this process started (False: Ray is a cluster's or the caller's, and stays). A
    command with no more use for Ray after its trials calls this: Ray's processes are gone before the deployment
    figures time anything, and the command ends without waiting on them. Synchronous, in the main thread, and the
    caller re-arms its signal handlers after it: Ray's shutdown resets SIGTERM to the default action under Python's
    handler (found by a SIGTERM during the figures, which then killed the command with no summary; a background
    shutdown left that window open)."""
    global _embedded
    if not _embedded:
        return False
    import ray

    _embedded = False
    ray.shutdown()
    return True


def _processes_apart():
    """Start an embedded Ray's processes in a process group of their own.

    A signal sent to the command's process group (Ctrl-C in a terminal, ``kill -TERM -PGID``) then reaches the
    controller only, which stops the sweep and shuts Ray down itself; Ray's processes would otherwise die of the
    SIGTERM under the trials (Ray blocks SIGINT in them, not SIGTERM). They still die with the controller: Ray
    starts them fate-sharing (the kernel kills them when their parent dies).

    Ray has no option for this; its processes are started through ``ray._private.services.ConsolePopen``, which
    this context replaces for the duration of ``ray.init`` with a subclass that first calls ``setpgid(0, 0)``."""
    from ray._private import services

    base = services.ConsolePopen

    class ApartPopen(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args, preexec_fn=None, **kwargs):
            def apart():
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()
            super().__init__(*args, preexec_fn=apart, **kwargs)

    @contextlib.contextmanager
    def patched():
        services.ConsolePopen = ApartPopen
        try:
            yield
        finally:
            services.ConsolePopen = base
    return patched()


def _address_env(address: str) -> dict | None:
    """The job's processes are told which cluster they belong to: Ray Train's placement-group cleaner (and any
    state-API call in an actor) otherwise looks for "the" Ray instance on its machine and fails where several run
    (a node shared by two clusters: "Found multiple active Ray instances"). Only a GCS address (host:port) is
    passed on, and only when the job's own runtime env does not set the variable already (Ray refuses a
    conflicting key)."""
    if "://" in address or address == "auto" or ":" not in address:
        return None
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    if "RAY_ADDRESS" in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_per_node() -> float:
    """GPUs of the cluster's largest GPU node (0 on a CPU-only cluster): what one node can give a trial."""
    import ray

    return float(max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0))

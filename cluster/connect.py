"""Connecting to Ray: the cluster named by ``RAY_ADDRESS``, else an embedded local one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

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


#: where a cluster's autoscaling config is read when Ray's GCS holds none (the v1 autoscaler of Ray's cluster
#: launcher: ``ray up`` puts it on the head as ``~/ray_bootstrap_config.yaml``); the variable names another file
CLUSTER_CONFIG_ENV = "VISIONSWEEP_CLUSTER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def gpus_per_node() -> float:
    """GPUs of the cluster's largest GPU node (0 on a CPU-only cluster): what one node can give a trial. On an
    autoscaling cluster that node may not run yet (GPU workers with ``min_workers: 0``): the node types the
    autoscaler can launch count too, or a sweep would plan CPU trials that never make it add a GPU node."""
    import ray

    alive = max((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    return float(max([alive, *(t["resources"].get("GPU", 0) for t in autoscaler_node_types().values())]))


def autoscaler_node_types() -> dict[str, dict]:
    """{node type: {"resources": ..., "max_workers": n, "labels": ...}} of the worker types the cluster's autoscaler
    can launch (``max_workers`` > 0): from the cluster config the autoscaler reported to Ray's GCS (autoscaler v2,
    KubeRay; it holds no labels: a spot group is known by its nodes' labels once they run), else from the cluster
    launcher's file on the head (``VISIONSWEEP_CLUSTER_CONFIG``, default ``~/ray_bootstrap_config.yaml``); empty where
    neither exists (a fixed cluster, an embedded Ray)."""
    import yaml

    if _embedded:
        return {}
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS or a client without the accessor: try the file
        config = None
    if config is not None and config.node_group_configs:
        return {g.name: {"resources": dict(g.resources), "max_workers": g.max_count, "labels": {}}
                for g in config.node_group_configs if g.max_count != 0}
    path = Path(os.path.expanduser(os.environ.get(CLUSTER_CONFIG_ENV) or BOOTSTRAP_CONFIG))
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
        cfg = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        types = cfg.get("available_node_types") or {}
        head = cfg.get("head_node_type")
        return {name: {"resources": dict(t.get("resources") or {}), "max_workers": int(t.get("max_workers", 0)),
                       "labels": dict(t.get("labels") or {})}
                for name, t in types.items() if name != head and int(t.get("max_workers", 0)) > 0}
    except Exception as e:  # noqa: BLE001 - a config we cannot read plans for the nodes there are
        log.warning("%s: cannot read the cluster's node types (%s); planning for the nodes that run now", path, e)
        return {}

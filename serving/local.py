"""One model package served on this machine: the ``visionsweep serve`` command and the demo's last step.

The package becomes endpoint ``local`` with one deployment ``main`` at 100 % traffic, on the Ray this process
started or joined; the command around it decides when to stop (:func:`stop_quietly`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from trainers.errors import VisionsweepError


def serve_package(package: str, host: str, port: int, auth_mode: str, name: str = "local",
                  cpus: float | None = None) -> dict[str, Any]:
    """Deploy one model package as endpoint ``name`` with deployment ``main`` at 100 % traffic; returns its scoring
    ``url`` and its primary ``key`` (None without key auth). An endpoint of that name is replaced."""
    from serving import endpoints
    from serving.specs import DeploymentSpec, EndpointSpec

    try:
        endpoints.delete_endpoint(name)
    except VisionsweepError:
        pass
    endpoints.create_endpoint(EndpointSpec(name=name, auth_mode=auth_mode))
    spec = DeploymentSpec(name="main", endpoint_name=name, model=package,
                          **({"cpus_per_instance": cpus} if cpus is not None else {}))
    endpoints.create_deployment(spec)
    state = endpoints.set_traffic(name, {"main": 100})
    return {"url": f"http://{host}:{port}/{name}/score",
            "key": state["keys"]["primary"] if auth_mode == "key" else None}


def own_ray_alive() -> bool:
    """False once a daemon (GCS, raylet ...) of the Ray that this process started has ended, e.g. by ``ray stop``
    in another shell. Asking reaps the ended ones: they are this process's children, and, left as zombies while it
    lives, ``ray stop`` counts them as running until its grace period (16 s) is over and then reports them as
    "forcefully terminated". A process that joined a cluster (``RAY_ADDRESS``) started none: always True."""
    from ray._private import worker

    node = worker._global_node
    return node is None or not node.dead_processes()


def stop_quietly() -> None:
    """Stop Serve, then this process's Ray, with nothing of their shutdown on stdout: Ray's driver prints the errors
    its raylet publishes (e.g. "(raylet) Task ServeController.graceful_shutdown failed ... killed by `ray.kill`", in
    colour, as Serve's controller ends itself) to whatever ``sys.stdout`` is at that moment, so that is stderr while
    Serve and Ray stop; Ray's and Serve's loggers log errors only, on stderr."""
    import ray
    from ray import serve

    stdout = sys.stdout
    sys.stdout.flush()
    sys.stdout = sys.stderr
    try:
        for name in ("ray", "ray.serve"):
            lg = logging.getLogger(name)
            lg.setLevel(logging.ERROR)
            for h in lg.handlers:
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stdout:
                    h.setStream(sys.stderr)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    finally:
        sys.stdout = stdout

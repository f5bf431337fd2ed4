"""Serving commands of ``visionsweep`` (wired in ``scheduler.cli``).

    visionsweep serve PACKAGE [--host H] [--port P] [--auth-mode key|none]
    visionsweep endpoint create --file endpoint.yml
    visionsweep endpoint update NAME --traffic blue=90,green=10 [--mirror green=10]
    visionsweep endpoint show|delete|get-credentials NAME
    visionsweep endpoint regenerate-keys NAME [--key-type primary|secondary]
    visionsweep deployment create|update --file deployment.yml
    visionsweep deployment delete ENDPOINT NAME

``serve`` runs in the foreground on an embedded Ray (or ``RAY_ADDRESS``) until Ctrl-C. The endpoint
commands work against a running Ray cluster (``ray start --head``, or ``RAY_ADDRESS``) whose Serve
HTTP proxy listens on ``$VISIONSWEEP_SERVE_HOST:$VISIONSWEEP_SERVE_PORT`` (default 127.0.0.1:8000).
Keys are printed only by ``create``, ``get-credentials`` and ``regenerate-keys``, never logged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cluster.connect import connect
from trainers.errors import VisionsweepError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def http_address() -> tuple[str, int]:
    return os.environ.get("VISIONSWEEP_SERVE_HOST", DEFAULT_HOST), int(os.environ.get("VISIONSWEEP_SERVE_PORT", DEFAULT_PORT))


def start_serve(host: str, port: int, detached: bool) -> None:
    """Start Serve's HTTP proxy. Its own timeout is the longest a deployment may ask for: each deployment's
    ``request_timeout_ms`` is enforced by its endpoint's router (408)."""
    from ray import serve

    from serving.specs import MAX_REQUEST_TIMEOUT_MS

    serve.start(detached=detached, http_options={"host": host, "port": port,
                                                 "request_timeout_s": MAX_REQUEST_TIMEOUT_MS / 1000})


def connect_cluster() -> None:
    """Connect to the long-lived cluster that hosts endpoints."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False,
                 logging_level="WARNING")
    except ConnectionError:
        raise VisionsweepError("no running Ray cluster to host endpoints: start one with `ray start --head` "
                               "(or set RAY_ADDRESS)") from None
    start_serve(*http_address(), detached=True)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def serve_package(package: str, host: str, port: int, auth_mode: str, name: str = "local",
                  cpus: float = 1.0) -> dict[str, Any]:
    """Deploy one model package as endpoint ``name`` with deployment ``main`` at 100 % traffic."""
    from serving import endpoints
    from serving.specs import DeploymentSpec, EndpointSpec

    try:
        endpoints.delete_endpoint(name)
    except VisionsweepError:
        pass
    endpoints.create_endpoint(EndpointSpec(name=name, auth_mode=auth_mode))
    endpoints.create_deployment(DeploymentSpec(name="main", endpoint_name=name, model=package,
                                               cpus_per_instance=cpus))
    state = endpoints.set_traffic(name, {"main": 100})
    return {"url": f"http://{host}:{port}/{name}/score", "key": state["keys"]["primary"] if auth_mode == "key" else None}


def cmd_serve(args) -> int:
    import ray
    from ray import serve


    connect()
    start_serve(args.host, args.port, detached=False)
    from serving.specs import local_model_path

    info = serve_package(local_model_path(args.package, Path.cwd()), args.host, args.port, args.auth_mode)
    print(f"serving {args.package} at {info['url']}")
    if info["key"]:
        print(f"key: {info['key']}")
        print(f"try: curl -H 'Authorization: Bearer {info['key']}' -H 'Content-Type: image/png' "
              f"--data-binary @image.png {info['url']}")
    print("Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_endpoint(args) -> int:
    from serving import endpoints
    from serving.specs import load_endpoint, parse_traffic

    action = args.action
    if action == "create":
        if not args.file:
            raise VisionsweepError("endpoint create: --file endpoint.yml is required")
        spec = load_endpoint(args.file)
        state = endpoints.create_endpoint(spec)
        host, port = http_address()
        _print({"name": spec.name, "scoring_uri": f"http://{host}:{port}/{spec.name}/score",
                "auth_mode": spec.auth_mode, "primary_key": state["keys"]["primary"]})
        return 0
    if not args.name:
        raise VisionsweepError(f"endpoint {action}: the endpoint NAME is required")
    if action == "show":
        _print(endpoints.show(args.name))
    elif action == "get-credentials":
        _print(endpoints.load_state(args.name)["keys"])
    else:
        connect_cluster()
        if action == "update":
            traffic = parse_traffic(args.traffic) if args.traffic else None
            mirror = parse_traffic(args.mirror) if args.mirror is not None else None
            if traffic is None and mirror is None:
                raise VisionsweepError("endpoint update: give --traffic NAME=PCT,... and/or --mirror NAME=PCT")
            state = endpoints.set_traffic(args.name, traffic, mirror)
            _print({"traffic": state["traffic"], "mirror": state["mirror"]})
        elif action == "regenerate-keys":
            state = endpoints.regenerate_keys(args.name, args.key_type)
            _print({args.key_type: state["keys"][args.key_type]})
        elif action == "delete":
            endpoints.delete_endpoint(args.name)
            print(f"deleted endpoint {args.name}")
    return 0


def cmd_deployment(args) -> int:
    from serving import endpoints
    from serving.specs import load_deployment

    if args.action in ("create", "update"):
        if not args.file:
            raise VisionsweepError(f"deployment {args.action}: --file deployment.yml is required")
        spec = load_deployment(args.file)
        connect_cluster()
        state = endpoints.create_deployment(spec, update=args.action == "update")
        _print({"endpoint": spec.endpoint_name, "deployment": spec.name, "traffic": state["traffic"]})
    else:
        if not (args.endpoint and args.name):
            raise VisionsweepError("deployment delete: ENDPOINT and NAME are required")
        connect_cluster()
        endpoints.delete_deployment(args.endpoint, args.name)
        print(f"deleted deployment {args.name} of {args.endpoint}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve one model package over HTTP until Ctrl-C")
    s.add_argument("package")
    s.add_argument("--host", default=DEFAULT_HOST)
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--auth-mode", choices=("key", "none"), default="key")
    s.set_defaults(fn=cmd_serve)
    e = sub.add_parser("endpoint", help="create, update (traffic), show, delete endpoints; manage keys")
    e.add_argument("action", choices=("create", "update", "show", "delete", "get-credentials", "regenerate-keys"))
    e.add_argument("name", nargs="?")
    e.add_argument("--file", "-f")
    e.add_argument("--traffic", help="e.g. blue=90,green=10 (weights sum to at most 100)")
    e.add_argument("--mirror", help="e.g. green=10: copy 10 %% of requests to green, responses discarded")
    e.add_argument("--key-type", default="primary", choices=("primary", "secondary"))
    e.set_defaults(fn=cmd_endpoint)
    d = sub.add_parser("deployment", help="create, update or delete a deployment of an endpoint")
    d.add_argument("action", choices=("create", "update", "delete"))
    d.add_argument("endpoint", nargs="?")
    d.add_argument("name", nargs="?")
    d.add_argument("--file", "-f")
    d.set_defaults(fn=cmd_deployment)

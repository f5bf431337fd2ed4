"""Serving commands of ``visionsweep``: the arguments of ``serving``'s library functions.

    visionsweep serve PACKAGE [--host H] [--port P] [--auth-mode key|none]
    visionsweep endpoint create --file endpoint.yml
    visionsweep endpoint update NAME --traffic blue=90,green=10 [--mirror green=10] [--no-wait] [--timeout S]
    visionsweep endpoint show NAME [--json]
    visionsweep endpoint delete|get-credentials NAME
    visionsweep endpoint regenerate-keys NAME [--key-type primary|secondary]
    visionsweep deployment create|update --file deployment.yml [--no-wait] [--timeout S]
    visionsweep deployment show|delete ENDPOINT NAME

``serve`` runs in the foreground on an embedded Ray (or ``RAY_ADDRESS``) until Ctrl-C or SIGTERM. The
endpoint commands work against a running Ray cluster (``ray start --head``, or ``RAY_ADDRESS``) whose Serve
HTTP proxy listens on ``$VISIONSWEEP_SERVE_HOST:$VISIONSWEEP_SERVE_PORT`` (default 127.0.0.1:8000); the
endpoints' state, keys included, is kept in that cluster (``serving.endpoints``), so every operator of the
cluster sees the same endpoints. Keys are printed only by ``create``, ``get-credentials`` and
``regenerate-keys`` (as ``primary_key`` / ``secondary_key``), never logged.

Changes wait until Serve runs them (progress on stderr, at most ``--timeout`` seconds, default
``$VISIONSWEEP_DEPLOY_TIMEOUT_S`` or 300); on failure or Ctrl-C Serve is rolled back to the saved state and
the command says what did not happen. ``--no-wait`` returns as soon as Serve has accepted the change.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cluster.connect import connect
from serving.connection import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    connect_cluster,
    connect_reader,
    disconnect,
    http_address,
    start_serve,
)
from serving.local import own_ray_alive, serve_package, stop_quietly
from serving.specs import local_model_path
from trainers.errors import VisionsweepError


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _keys(keys: dict[str, str], which: tuple[str, ...] = ("primary", "secondary")) -> dict[str, str]:
    """Keys as every command prints them: ``{"primary_key": ..., "secondary_key": ...}``."""
    return {f"{k}_key": keys[k] for k in which}


class _Stop(Exception):
    """Raised in the main thread by SIGTERM: ends ``serve`` like Ctrl-C."""


def cmd_serve(args) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop Serve and Ray and exit 0 ("stopped" on stderr); exit 1 when the
    embedded Ray is stopped from outside (``ray stop``).

    SIGTERM is turned into an exception in the main thread so the same clean shutdown runs (Python's default
    would end the process without it, leaving Ray's agents behind). While Serve stops, its controller kills
    the replicas; Ray reports that on the console, so Ray's loggers are limited to errors on stderr then."""
    def on_term(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    started = ended_outside = False
    try:
        connect()
        started = True
        # ray.init installs its own SIGTERM handler (it logs a stack and aborts: rc -6, Ray's agents left
        # running): ours again, now that Ray is up
        signal.signal(signal.SIGTERM, on_term)
        start_serve(args.host, args.port, detached=False)
        info = serve_package(local_model_path(args.package, Path.cwd()), args.host, args.port, args.auth_mode)
        print(f"serving {args.package} at {info['url']}")
        if info["key"]:
            print(f"key: {info['key']}")
            print(f"try: curl -H 'Authorization: Bearer {info['key']}' -H 'Content-Type: image/png' "
                  f"--data-binary @image.png {info['url']}")
        print("Ctrl-C (or SIGTERM) to stop", flush=True)
        while own_ray_alive():
            time.sleep(0.5)
        ended_outside = True
        print("this command's Ray was stopped from outside (`ray stop` stops every Ray on the machine, this one's "
              "too): serving ended", file=sys.stderr, flush=True)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        try:
            # Ray stopped from outside: Serve's controller went with it, and Ray's own exit handler disconnects
            # (its core worker may end the process then, with the exit code 1 this command returns anyway)
            if started and not ended_outside:
                stop_quietly()
        finally:
            signal.signal(signal.SIGTERM, previous)
    print("stopped", file=sys.stderr, flush=True)
    return 1 if ended_outside else 0


def _cancelled(what: str) -> int:
    print(f"cancelled: {what}", file=sys.stderr, flush=True)
    return 130


def _timeout(args) -> float | None:
    t = getattr(args, "timeout", None)
    if t is not None and t <= 0:
        raise VisionsweepError(f"--timeout: expected a number of seconds above 0, but got {t:g}")
    return t


def cmd_endpoint(args) -> int:
    """``endpoint`` actions; Ctrl-C says which change did not happen (the state is unchanged: Serve is rolled
    back to it, see ``serving.endpoints.apply``)."""
    what = {"create": "the endpoint was not created; no endpoint state saved",
            "update": f"endpoint {args.name} was not updated; endpoint state unchanged",
            "regenerate-keys": f"the {args.key_type} key of endpoint {args.name} was not regenerated; "
                               "endpoint state unchanged",
            "delete": f"deleting endpoint {args.name} was interrupted; `visionsweep endpoint show {args.name}` "
                      "says whether it is still there"}.get(args.action, f"endpoint {args.action} {args.name or ''}")
    try:
        return _endpoint(args)
    except KeyboardInterrupt:
        return _cancelled(what)
    finally:
        disconnect()


def _endpoint(args) -> int:
    from serving import endpoints
    from serving.specs import load_endpoint, parse_traffic

    action = args.action
    if action == "create":
        if not args.file:
            raise VisionsweepError("endpoint create: --file endpoint.yml is required")
        spec = load_endpoint(args.file)
        connect_cluster(serve=False)
        state = endpoints.create_endpoint(spec)
        host, port = http_address()
        _print({"name": spec.name, "scoring_uri": f"http://{host}:{port}/{spec.name}/score",
                "auth_mode": spec.auth_mode, **_keys(state["keys"])})
        return 0
    if not args.name:
        raise VisionsweepError(f"endpoint {action}: the endpoint NAME is required")
    if action == "get-credentials":
        connect_reader()
        _print(_keys(endpoints.load_state(args.name)["keys"]))
        return 0
    if action == "show":  # only reads: Serve is neither started nor joined
        connect_reader()
        if args.json:
            _print(endpoints.show(args.name))
        else:
            host, port = http_address()
            _print(endpoints.summary(args.name, f"http://{host}:{port}/{args.name}/score"))
        return 0
    connect_cluster()
    if action == "update":
        traffic = parse_traffic(args.traffic) if args.traffic else None
        mirror = parse_traffic(args.mirror) if args.mirror is not None else None
        if traffic is None and mirror is None:
            raise VisionsweepError("endpoint update: give --traffic NAME=PCT,... and/or --mirror NAME=PCT")
        state = endpoints.set_traffic(args.name, traffic, mirror, wait=not args.no_wait, timeout_s=_timeout(args))
        _print({"traffic": state["traffic"], "mirror": state["mirror"]})
    elif action == "regenerate-keys":
        state = endpoints.regenerate_keys(args.name, args.key_type)
        _print(_keys(state["keys"], (args.key_type,)))
    elif action == "delete":
        endpoints.delete_endpoint(args.name)
        print(f"deleted endpoint {args.name}")
    return 0


def cmd_deployment(args) -> int:
    """``deployment`` actions; Ctrl-C says which change did not happen (see ``cmd_endpoint``)."""
    target = f"deployment {args.name or '?'} of endpoint {args.endpoint or '?'}"
    if args.action in ("create", "update") and args.file:
        try:
            from serving.specs import load_deployment

            spec = load_deployment(args.file)
            target = f"deployment {spec.name} of endpoint {spec.endpoint_name}"
        except Exception:
            pass  # reported by _deployment
    what = {"create": f"{target} was not created; endpoint state unchanged",
            "update": f"{target} was not updated; endpoint state unchanged",
            "delete": f"{target} was not deleted; endpoint state unchanged"}.get(args.action,
                                                                                  f"deployment {args.action}")
    try:
        return _deployment(args)
    except KeyboardInterrupt:
        return _cancelled(what)
    finally:
        disconnect()


def _deployment(args) -> int:
    from serving import endpoints
    from serving.specs import load_deployment

    if args.action in ("create", "update"):
        if not args.file:
            raise VisionsweepError(f"deployment {args.action}: --file deployment.yml is required")
        spec = load_deployment(args.file)
        connect_cluster()
        state = endpoints.create_deployment(spec, update=args.action == "update", wait=not args.no_wait,
                                            timeout_s=_timeout(args))
        out = {"endpoint": spec.endpoint_name, "deployment": spec.name, "traffic": state["traffic"]}
        if args.no_wait:
            out["progress"] = f"visionsweep deployment show {spec.endpoint_name} {spec.name}"
        _print(out)
        return 0
    if not (args.endpoint and args.name):
        raise VisionsweepError(f"deployment {args.action}: ENDPOINT and NAME are required")
    if args.action == "show":  # only reads: Serve is neither started nor joined
        connect_reader()
        _print(endpoints.deployment_show(args.endpoint, args.name))
    else:
        connect_cluster()
        endpoints.delete_deployment(args.endpoint, args.name, timeout_s=_timeout(args))
        print(f"deleted deployment {args.name} of {args.endpoint}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve one model package over HTTP until Ctrl-C or SIGTERM")
    s.add_argument("package")
    s.add_argument("--host", default=DEFAULT_HOST)
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--auth-mode", choices=("key", "none"), default="key")
    s.set_defaults(fn=cmd_serve)
    wait_help = "return once Serve has accepted the change (follow it with `deployment show`)"
    timeout_help = ("seconds to wait for the deployments to run before failing and rolling Serve back "
                    "(default: $VISIONSWEEP_DEPLOY_TIMEOUT_S or 300)")
    e = sub.add_parser("endpoint", help="create, update (traffic), show, delete endpoints; manage keys")
    e.add_argument("action", choices=("create", "update", "show", "delete", "get-credentials", "regenerate-keys"))
    e.add_argument("name", nargs="?")
    e.add_argument("--file", "-f")
    e.add_argument("--traffic", help="e.g. blue=90,green=10 (weights sum to at most 100)")
    e.add_argument("--mirror", help="e.g. green=10: copy 10 %% of requests to green, responses discarded")
    e.add_argument("--key-type", default="primary", choices=("primary", "secondary"))
    e.add_argument("--no-wait", action="store_true", help=wait_help)
    e.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    e.add_argument("--json", action="store_true", help="show: the stored state (without keys) as it is")
    e.set_defaults(fn=cmd_endpoint)
    d = sub.add_parser("deployment", help="create, update, show (progress) or delete a deployment of an endpoint")
    d.add_argument("action", choices=("create", "update", "show", "delete"))
    d.add_argument("endpoint", nargs="?")
    d.add_argument("name", nargs="?")
    d.add_argument("--file", "-f")
    d.add_argument("--no-wait", action="store_true", help=wait_help)
    d.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    d.set_defaults(fn=cmd_deployment)

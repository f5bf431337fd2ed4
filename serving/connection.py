"""Connecting the serving commands (and the Python API's endpoint calls) to the cluster that hosts endpoints:
its address and token, Serve's HTTP proxy, one connection per process (``connect_cluster``; ``connect_reader`` for
the commands that only read), and ending it (``disconnect``). A library module: ``serving.endpoints``,
``visionsweep.client`` and the demo use it as well as the commands in ``visionsweep.cli.serving``."""

from __future__ import annotations

import logging
import os

from trainers.errors import VisionsweepError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
AUTH_HELP = ("set RAY_AUTH_MODE=token and give this cluster's token, as RAY_AUTH_TOKEN_PATH=<file> (`ray start "
             "--head` writes ~/.ray/auth_token on the head machine) or RAY_AUTH_TOKEN=<token>")


def http_address() -> tuple[str, int]:
    return (os.environ.get("VISIONSWEEP_SERVE_HOST", DEFAULT_HOST),
            int(os.environ.get("VISIONSWEEP_SERVE_PORT", DEFAULT_PORT)))


def quiet_serve_logs() -> None:
    """Serve logs "Connecting to existing Serve app ..." at INFO on every ``serve.start``/``run`` of a client:
    noise on an operator's terminal. Warnings and errors still show (on stderr)."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def start_serve(host: str, port: int, detached: bool) -> None:
    """Start Serve's HTTP proxy. Its own timeout is the longest a deployment may ask for: each deployment's
    ``request_timeout_ms`` is enforced by its endpoint's router (408)."""
    from ray import serve

    from serving.specs import MAX_REQUEST_TIMEOUT_MS

    quiet_serve_logs()
    serve.start(detached=detached, http_options={"host": host, "port": port,
                                                 "request_timeout_s": MAX_REQUEST_TIMEOUT_MS / 1000})


def check_auth(address: str | None):
    """Fail at once, saying so, when the cluster refuses us for want of a (right) token; returns the GCS
    connection the check made (a ``GcsClient``; None where none was made), which ``connect_reader`` goes on
    using.

    Ray's own ``ray.init`` retries an unauthenticated GCS for 20 s, printing ``InvalidAuthToken`` each second,
    then raises a bare "Failed to connect"; one direct request to the GCS raises Ray's ``AuthenticationError``
    at once. Only done when the GCS port answers (otherwise ``ray.init`` reports the missing cluster)."""
    import socket

    if not address or "://" in address:
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address

        addr = canonicalize_bootstrap_address(address)
        host, port = addr.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
    except Exception:
        return None
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        gcs = GcsClient(address=addr)
        gcs.internal_kv_keys(b"", b"visionsweep-endpoints", timeout=10)  # a request: the token is checked now
        return gcs
    except AuthenticationError as e:
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise VisionsweepError(f"the Ray cluster at {addr} refused the connection: an authentication problem "
                               f"(the cluster uses token authentication; RAY_AUTH_MODE is {mode}; Ray says: "
                               f"{e.message}). Expected a valid token: {AUTH_HELP}") from None
    except Exception:
        return None


_CONNECTED_HERE = False  # connect_cluster made this process's Ray connection (disconnect() ends it)
_READER_HERE = False  # connect_reader gave Ray's key-value store this process's GCS connection (the same)


def connect_reader() -> None:
    """Connect a command that only reads (``endpoint show``, ``deployment show``, ``get-credentials``): the
    endpoint store through one GCS connection, the one ``check_auth`` opens; Serve's status from the dashboard
    (``serving.endpoints._app_status``); readiness from the endpoint's router over HTTP. No Ray driver
    (``ray.init`` and its shutdown: about half a second) and no Serve client (importing ``ray.serve`` alone:
    0.6-1 s on 2 cores), neither started nor joined. Without a direct GCS connection (a ``ray://`` address),
    as ``connect_cluster(serve=False)``."""
    import ray
    from ray.experimental import internal_kv

    global _READER_HERE
    quiet_serve_logs()
    if ray.is_initialized() or internal_kv._internal_kv_initialized():
        return
    gcs = check_auth(os.environ.get("RAY_ADDRESS", "auto"))
    if gcs is None:
        connect_cluster(serve=False)
        return
    internal_kv._initialize_internal_kv(gcs)
    _READER_HERE = True


def connect_cluster(serve: bool = True) -> None:
    """Connect to the long-lived cluster that hosts endpoints (and, with ``serve``, start or join its Serve).

    One connection per process, reused by every call (``disconnect`` ends it when a command is done). The
    commands that only read connect with ``connect_reader`` instead."""
    import ray

    global _CONNECTED_HERE
    quiet_serve_logs()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS", "auto")
        check_auth(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except ConnectionError:
            raise VisionsweepError("no running Ray cluster to host endpoints: start one with `ray start --head` "
                                   "(or set RAY_ADDRESS). If the cluster uses token authentication: "
                                   f"{AUTH_HELP}") from None
        _CONNECTED_HERE = True
    if serve:
        start_serve(*http_address(), detached=True)


def disconnect() -> None:
    """End the connection that ``connect_cluster`` or ``connect_reader`` made (none made: nothing, e.g. in a
    test's or a notebook's process). Called when a command is done: ``ray.shutdown()`` here takes a quarter of a
    second, left to Ray's exit handler it took a second more."""
    global _CONNECTED_HERE, _READER_HERE
    if _CONNECTED_HERE:
        import ray

        _CONNECTED_HERE = False
        ray.shutdown()
    if _READER_HERE:
        from ray.experimental import internal_kv

        _READER_HERE = False
        internal_kv._internal_kv_reset()

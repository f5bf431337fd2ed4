"""Endpoints and their deployments: stored state, keys, traffic, and (re)deploying on Ray Serve.

State lives in the cluster, in Ray's internal key-value store (GCS, namespace ``visionsweep-endpoints``, one
JSON value per endpoint), so every operator of a cluster (any ``$VISIONSWEEP_HOME``, the same
``RAY_ADDRESS``) sees the same endpoints and keys; reading or changing it needs a Ray connection
(``serving.connection.connect_cluster``). The store is readable by whoever can connect to the cluster as a
driver (with token auth, Ray 2.60's default, only holders of its token), and the dashboard's REST API does
not serve it, so it is where the keys are kept; the router is given only salted digests of them
(``serving.keys``), because Serve's config is shown by the dashboard. A state file of an older visionsweep
(``$VISIONSWEEP_HOME/endpoints/<name>.json``) is moved into the cluster the first time its endpoint is used.

Every change is validated first, then submitted to Serve (``serve.run_many`` without Serve's own waits),
then, unless the caller asked not to wait, waited for (progress on stderr, a time limit, the scheduling
reason on failure), then stored. Traffic, mirror and key changes only reconfigure the running router;
adding or removing a deployment rolls the router over while in-flight requests finish.

State and Serve are kept in step by rolling Serve back: when the wait fails (time limit, failed deploy)
or is interrupted (Ctrl-C, SIGTERM), the stored state, unchanged, is submitted to Serve again (or the
application deleted when it had no deployment), so Serve returns to what the store says. With
``wait=False`` the new state is stored as soon as Serve has accepted it; ``deployment show`` reports its
progress.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from serving.keys import key_check, new_key, new_salt
from serving.specs import DeploymentSpec, EndpointSpec, check_traffic
from trainers.errors import SpecError, VisionsweepError
from trainers.home import visionsweep_home

NAMESPACE = "visionsweep-endpoints"
DEFAULT_WAIT_S = 300.0
PROGRESS_EVERY_S = 3.0


def default_timeout_s() -> float:
    """How long a change waits for its deployments to run: ``$VISIONSWEEP_DEPLOY_TIMEOUT_S`` or 300 s."""
    raw = os.environ.get("VISIONSWEEP_DEPLOY_TIMEOUT_S")
    try:
        return float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        raise VisionsweepError(f"VISIONSWEEP_DEPLOY_TIMEOUT_S: expected seconds (a number), but got {raw!r}") from None


# --- the store ------------------------------------------------------------------------------------

def _kv():
    """Ray's internal key-value store: through the Ray driver's connection (``ray.init``), or through the GCS
    connection of a command that only reads (``serving.connection.connect_reader``)."""
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        raise VisionsweepError("endpoint state is kept in the Ray cluster: connect to it first "
                               "(serving.connection.connect_cluster, or ray.init)")
    return internal_kv


def _legacy_path(name: str) -> Path:
    return visionsweep_home() / "endpoints" / f"{name}.json"


def _import_legacy(name: str) -> dict[str, Any] | None:
    """An older visionsweep's local state file of ``name``, moved into the cluster (the file is renamed
    ``<name>.json.imported`` so it is not imported twice)."""
    p = _legacy_path(name)
    if not p.is_file():
        return None
    state = json.loads(p.read_text())
    if _kv()._internal_kv_put(name, json.dumps(state), overwrite=False, namespace=NAMESPACE):
        return None  # the cluster has one already (another operator's): it wins
    p.replace(p.with_name(p.name + ".imported"))
    return state


def load_state(name: str) -> dict[str, Any]:
    raw = _kv()._internal_kv_get(name, namespace=NAMESPACE)
    if raw is None:
        state = _import_legacy(name)
        if state is None:
            raise VisionsweepError(f"no endpoint named {name!r} in this Ray cluster "
                                   "(create it with `visionsweep endpoint create`)")
        return state
    return json.loads(raw)


def save_state(state: dict[str, Any], create: bool = False) -> None:
    """Store the endpoint's state in the cluster; ``create``: only if no endpoint of that name exists."""
    name = state["endpoint"]["name"]
    existed = _kv()._internal_kv_put(name, json.dumps(state), overwrite=not create, namespace=NAMESPACE)
    if create and existed:
        raise VisionsweepError(f"endpoint {name!r} exists already (use `visionsweep endpoint update`)")


def list_endpoints() -> list[str]:
    return sorted(k.decode() for k in _kv()._internal_kv_list("", namespace=NAMESPACE))


def _forget(name: str) -> None:
    _kv()._internal_kv_del(name, namespace=NAMESPACE)


def router_config(state: dict[str, Any]) -> dict[str, Any]:
    """The router's ``user_config``: shown by Ray's dashboard and Serve's REST API, so no key in it, only
    digests under the endpoint's salt (made here for a state written before there was one)."""
    salt = state.setdefault("key_salt", new_salt())
    return {"traffic": state["traffic"], "mirror": state["mirror"], "auth_mode": state["endpoint"]["auth_mode"],
            "key_check": key_check([state["keys"]["primary"], state["keys"]["secondary"]], salt)}


# --- Serve ----------------------------------------------------------------------------------------

def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _name(x: Any) -> str:
    """An enum of Serve's status (or its name) as its plain name: ``RUNNING``, ``HEALTHY`` ..."""
    return str(getattr(x, "value", x))


def _submit(state: dict[str, Any]) -> None:
    """Hand the endpoint's application to Serve and return: ``serve.run`` (even with ``blocking=False``)
    waits inside Ray until the application runs, with no limit, which is why a deployment that cannot be
    scheduled used to hang; ``run_many`` with both of its waits off only submits."""
    from ray import serve

    from serving.app import build_app

    name = state["endpoint"]["name"]
    if not state["deployments"]:
        try:
            serve.delete(name, _blocking=False)
        except Exception:
            pass
        return
    app = build_app(name, state["deployments"], router_config(state))
    serve.run_many([serve.RunTarget(target=app, name=name, route_prefix=f"/{name}")],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


def apply(state: dict[str, Any], previous: dict[str, Any] | None = None, wait: bool = True,
          timeout_s: float | None = None, progress: Callable[[str], None] | None = None) -> None:
    """Deploy (or update) the endpoint's Serve application from ``state``.

    ``wait``: until every deployment runs its target replicas (progress lines to ``progress``, stderr by
    default, every few seconds), at most ``timeout_s`` (default ``default_timeout_s()``). When the wait fails
    or is interrupted, Serve is rolled back to ``previous`` (the stored state, which the caller has not
    changed yet; ``None``: the endpoint had no application) and the error raised again: the store is never
    ahead of or behind Serve because of a failed change."""
    _submit(state)
    if not wait or not state["deployments"]:
        return
    try:
        _wait_running(state, default_timeout_s() if timeout_s is None else timeout_s, progress or _stderr)
    except VisionsweepError as e:
        _roll_back(state["endpoint"]["name"], previous)
        raise VisionsweepError(f"{e}. Serve was rolled back to the endpoint's saved state") from None
    except BaseException:  # Ctrl-C, SIGTERM: the command's caller says what was cancelled
        _roll_back(state["endpoint"]["name"], previous)
        raise


def _roll_back(name: str, previous: dict[str, Any] | None) -> None:
    try:
        _submit(previous or {"endpoint": {"name": name}, "deployments": {}})
    except Exception as e:  # the original error matters more; say that Serve may differ from the store
        _stderr(f"warning: could not roll Serve back for endpoint {name} ({type(e).__name__}: {e}); "
                f"`visionsweep endpoint show {name}` shows what runs")


def _target_replicas(d: dict[str, Any]) -> int:
    scale = d["scale_settings"]
    return scale["min_instances"] if scale["type"] == "target_utilization" else d["instance_count"]


def _app_status(name: str) -> dict[str, Any] | None:
    """Serve's status of the endpoint's application, or None when there is none::

        {"status": "RUNNING", "message": "", "deployments": {"<endpoint>-blue": {"status": "HEALTHY",
         "message": "", "replicas": {"RUNNING": 1}}}}

    Never starts Serve. With a Ray driver (the commands that change endpoints), from ``serve.status()``. Without
    one (the commands that only read, ``serving.connection.connect_reader``), the same status from Serve's REST API on
    the cluster's dashboard (``GET /api/serve/applications/``, what ``serve.status()`` reads from Serve's
    controller too): importing ``ray.serve`` alone takes longer than such a command should. Where the
    dashboard cannot be had, a driver after all."""
    import ray

    if not ray.is_initialized():
        details = _serve_details()
        if details is not None:
            app = (details.get("applications") or {}).get(name)
            if app is None:
                return None
            return {"status": app["status"], "message": app.get("message") or "",
                    "deployments": {d: {"status": st["status"], "message": st.get("message") or "",
                                        "replicas": dict(Counter(r["state"] for r in st.get("replicas") or []))}
                                    for d, st in (app.get("deployments") or {}).items()}}
        from serving.connection import connect_cluster

        connect_cluster(serve=False)
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return None
    return {"status": _name(app.status), "message": app.message or "",
            "deployments": {d: {"status": _name(st.status), "message": st.message or "",
                                "replicas": {_name(k): n for k, n in (st.replica_states or {}).items()}}
                            for d, st in app.deployments.items()}}


def _serve_details(timeout_s: float = 10) -> dict[str, Any] | None:
    """Serve's REST API answer (``ServeInstanceDetails``) from this cluster's dashboard, or None where there is no
    dashboard, it does not answer, or it answers for another Ray session (a dashboard address that the head
    publishes as 127.0.0.1, read on another machine that runs a Ray of its own)."""
    import urllib.error
    import urllib.request

    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    kv = _kv()
    address, session = (kv._internal_kv_get("dashboard", namespace="dashboard"),
                        kv._internal_kv_get("session_name", namespace="session"))
    if not address:
        return None
    headers = get_auth_headers_if_auth_enabled({})

    def get(path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{address.decode()}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())

    try:
        if session and get("/api/ray/version").get("session_name") != session.decode():
            return None
        return get("/api/serve/applications/")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def deployment_progress(state: dict[str, Any], deployment: str, app: dict[str, Any] | None = None) -> dict[str, Any]:
    """Serve's view of one deployment (``app``: ``_app_status``): its status, replicas running / target, and
    Serve's message."""
    name = state["endpoint"]["name"]
    d = state["deployments"][deployment]
    st = (app or {}).get("deployments", {}).get(f"{name}-{deployment}")
    return {"endpoint": name, "deployment": deployment, "status": st["status"] if st else "NOT_DEPLOYED",
            "replicas_running": st["replicas"].get("RUNNING", 0) if st else 0, "replicas_target": _target_replicas(d),
            "message": (st["message"] if st else "") or "", "cpus_per_instance": d.get("cpus_per_instance"),
            "runtime": d.get("runtime", "pytorch"),
            "traffic": state["traffic"].get(deployment, 0)}


def _all_running(state: dict[str, Any], app: dict[str, Any] | None) -> bool:
    if app is None or app["status"] != "RUNNING":
        return False
    return all(p["status"] == "HEALTHY" and p["replicas_running"] >= p["replicas_target"]
               for p in (deployment_progress(state, n, app) for n in state["deployments"]))


def _resource_hint(state: dict[str, Any], waiting: list[str]) -> str:
    """Why replicas of ``waiting`` may not be scheduled: what each asks for against what the cluster has free."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    hints = []
    for n in waiting:
        d = state["deployments"][n]
        cpus, gpus = float(d.get("cpus_per_instance", 1.0)), float(d.get("num_gpus", 0.0))
        if cpus > free.get("CPU", 0) + 1e-9:
            hints.append(f"each replica of {n} asks for {cpus:g} CPU (cpus_per_instance) and the cluster has "
                         f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPU free: lower cpus_per_instance in "
                         "the deployment YAML (or instance_count), or free or add CPUs")
        if gpus > free.get("GPU", 0) + 1e-9:
            hints.append(f"each replica of {n} asks for {gpus:g} GPU (instance_type: "
                         f"{d.get('instance_type')}) and the cluster has {free.get('GPU', 0):g} GPU free: use a "
                         "cpu instance_type or add GPUs")
    return "; ".join(hints)


def _progress_line(state: dict[str, Any], app: Any) -> str:
    parts = []
    for n in state["deployments"]:
        p = deployment_progress(state, n, app)
        msg = f" - {p['message']}" if p["message"] else ""
        parts.append(f"{n}: {p['replicas_running']}/{p['replicas_target']} replicas running ({p['status']}{msg})")
    return f"endpoint {state['endpoint']['name']}: " + "; ".join(parts)


def _wait_running(state: dict[str, Any], timeout_s: float, progress: Callable[[str], None]) -> None:
    name = state["endpoint"]["name"]
    t0 = time.monotonic()
    printed = None
    while True:
        app = _app_status(name)
        if _all_running(state, app):
            return
        if app is not None and app["status"] == "DEPLOY_FAILED":
            raise VisionsweepError(f"endpoint {name}: Serve could not deploy it: {app['message']}")
        now = time.monotonic()
        waiting = [n for n in state["deployments"]
                   if (p := deployment_progress(state, n, app))["replicas_running"] < p["replicas_target"]]
        if now - t0 >= timeout_s:
            hint = _resource_hint(state, waiting) or ("raise the limit (--timeout SECONDS or "
                                                      "VISIONSWEEP_DEPLOY_TIMEOUT_S) if the model is slow to load")
            raise VisionsweepError(f"endpoint {name}: not running after {timeout_s:g} s, the limit "
                                   f"(--timeout / VISIONSWEEP_DEPLOY_TIMEOUT_S): {_progress_line(state, app)}. {hint}")
        if now - (printed or t0) >= PROGRESS_EVERY_S:  # nothing for a quick change
            hint = _resource_hint(state, waiting) if now - t0 >= PROGRESS_EVERY_S else ""
            progress(_progress_line(state, app) + (f" [waiting for resources: {hint}]" if hint else ""))
            printed = now
        time.sleep(0.25)


# --- operations -----------------------------------------------------------------------------------

def create_endpoint(spec: EndpointSpec) -> dict[str, Any]:
    state = {"endpoint": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
             "keys": {"primary": new_key(), "secondary": new_key()}, "key_salt": new_salt(),
             "deployments": {}, "traffic": {}, "mirror": {}}
    if _legacy_path(spec.name).is_file():
        raise VisionsweepError(f"endpoint {spec.name!r} exists already in {_legacy_path(spec.name)} "
                               "(use `visionsweep endpoint update`)")
    save_state(state, create=True)
    return state


def create_deployment(spec: DeploymentSpec, update: bool = False, wait: bool = True,
                      timeout_s: float | None = None) -> dict[str, Any]:
    saved = load_state(spec.endpoint_name)
    state = copy.deepcopy(saved)
    exists = spec.name in state["deployments"]
    if exists and not update:
        raise VisionsweepError(f"deployment {spec.name!r} exists already in {spec.endpoint_name} "
                               "(use `visionsweep deployment update`)")
    if update and not exists:
        raise VisionsweepError(f"no deployment named {spec.name!r} in {spec.endpoint_name}")
    d = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    d["num_gpus"] = spec.num_gpus
    # imported here, not at the top: it loads torch (seconds), which the commands that only read state skip
    from trainers.package.references import (
        default_registry_uri,
        fetch_registered,
        is_registry_reference,
        pin_registered,
    )

    if is_registry_reference(spec.model):
        # Resolve the reference now, where the user's environment is, so a wrong name/version or registry is
        # an error of this command; the replicas fetch the same version from the same registry.
        registry = spec.model_registry_uri or default_registry_uri()
        if not registry:
            raise VisionsweepError(f"deployment {spec.name}: model {spec.model} is a registry reference; set "
                                   "MLFLOW_TRACKING_URI or model_registry_uri to the MLflow registry holding it")
        d["model_registry_uri"], d["model_reference"] = registry, spec.model
        d["model"] = pin_registered(spec.model, registry)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="visionsweep-pkg-") as tmp:
            if not (fetch_registered(d["model"], tmp, registry) / "model.json").is_file():
                raise VisionsweepError(f"deployment {spec.name}: {spec.model} ({d['model']}) is registered, but its "
                                       "files are not a model package (no model.json)")
    if spec.runtime != "pytorch":
        # part of the replicas' version: `deployment update` after `visionsweep export` starts replicas on the new
        # graph; a traffic change does not (the stamp changes only here)
        from serving.onnx_runtime import graph_stamp

        d["graph_stamp"] = graph_stamp(d["model"], spec.runtime)
    state["deployments"][spec.name] = d
    state["traffic"].setdefault(spec.name, 0)  # a new deployment starts at 0 % (§9.3)
    apply(state, saved, wait, timeout_s)
    save_state(state)
    return state


def delete_deployment(endpoint: str, name: str, wait: bool = True, timeout_s: float | None = None) -> dict[str, Any]:
    saved = load_state(endpoint)
    state = copy.deepcopy(saved)
    if name not in state["deployments"]:
        raise VisionsweepError(f"no deployment named {name!r} in {endpoint}")
    if state["traffic"].get(name, 0) > 0:
        raise SpecError(f"deployment {name} still receives {state['traffic'][name]} % of traffic; "
                        "set it to 0 first")
    del state["deployments"][name]
    state["traffic"].pop(name, None)
    state["mirror"].pop(name, None)
    apply(state, saved, wait, timeout_s)
    save_state(state)
    return state


def set_traffic(endpoint: str, traffic: dict[str, int] | None = None, mirror: dict[str, int] | None = None,
                wait: bool = True, timeout_s: float | None = None) -> dict[str, Any]:
    saved = load_state(endpoint)
    state = copy.deepcopy(saved)
    names = set(state["deployments"])
    if traffic is not None:
        state["traffic"] = {**{n: 0 for n in names}, **check_traffic(traffic, names)}
    if mirror is not None:
        check_traffic(mirror, names, "mirror")
        for n, p in mirror.items():
            if p and state["traffic"].get(n, 0) > 0:
                raise SpecError(f"mirror: {n} receives live traffic; mirror traffic goes to a deployment at 0 %")
        state["mirror"] = {n: p for n, p in mirror.items() if p}
    apply(state, saved, wait, timeout_s)
    save_state(state)
    return state


def regenerate_keys(endpoint: str, which: str = "primary") -> dict[str, Any]:
    if which not in ("primary", "secondary"):
        raise SpecError(f"--key-type: expected primary or secondary, but got {which!r}")
    saved = load_state(endpoint)
    state = copy.deepcopy(saved)
    state["keys"][which] = new_key()
    apply(state, saved)
    save_state(state)
    return state


def delete_endpoint(endpoint: str) -> None:
    from ray import serve

    state = load_state(endpoint)
    try:
        # With no deployment stored, the application is gone or going already (a rollback, the last
        # `deployment delete`): nothing to wait for (Serve waits graceful_shutdown_timeout_s, 20 s, for a
        # replica that never started)
        serve.delete(endpoint, _blocking=bool(state["deployments"]))
    finally:
        _forget(endpoint)


def show(endpoint: str) -> dict[str, Any]:
    """The endpoint's stored state without its keys (nor their salt)."""
    state = load_state(endpoint)
    return {k: v for k, v in state.items() if k not in ("keys", "key_salt")}


def readiness(state: dict[str, Any], deployments: list[str], timeout_s: float = 10) -> dict[str, Any] | None:
    """The router's readiness of ``deployments`` (its probes, §9.3): ``{name: {"ready", "reason"}}``, or None
    when the router does not answer.

    Asked over HTTP (``GET /<endpoint>/status`` with the endpoint's key, through Serve's proxy at
    ``$VISIONSWEEP_SERVE_HOST:$VISIONSWEEP_SERVE_PORT``): a command that only reads needs no Serve handle,
    whose router and long-poll threads cost a second to set up and another to tear down at exit. Where the
    endpoint's router does not answer there (an operator on another machine, another port), through a Serve
    handle."""
    if not deployments:
        return {}
    import urllib.error
    import urllib.parse
    import urllib.request

    from serving.connection import http_address

    name = state["endpoint"]["name"]
    host, port = http_address()
    query = urllib.parse.urlencode({"deployments": ",".join(deployments)})
    req = urllib.request.Request(f"http://{host}:{port}/{name}/status?{query}",
                                 headers={"Authorization": f"Bearer {state['keys']['primary']}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())["deployments"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):  # HTTPError too: not this endpoint's router
        pass
    import ray
    from ray import serve

    from serving.connection import connect_cluster

    try:
        if not ray.is_initialized():
            connect_cluster(serve=False)
        handle = serve.get_deployment_handle(f"{name}-router", app_name=name)
        return handle.readiness.remote(deployments).result(timeout_s=timeout_s)["deployments"]
    except Exception:
        return None


def deployment_readiness(progress: dict[str, Any], router: dict[str, Any] | None) -> dict[str, Any]:
    """``{"ready": bool}`` (with ``"reason"`` when not ready) of one deployment: ready only while Serve runs at
    least one of its replicas (``progress``, from Serve's status) and the router's readiness probe passes. The
    router's answer alone is not enough: it holds its last check for ``period`` seconds, and during a rollout
    (Serve stops the old replica before it starts the new one) it may still say ready while no replica runs."""
    if progress["replicas_running"] == 0:
        return {"ready": False, "reason": f"no replica running ({progress['replicas_running']}/"
                                          f"{progress['replicas_target']}; Serve: {progress['status']})"}
    if router is None:
        return {"ready": False, "reason": "the endpoint's router did not answer"}
    return {"ready": True} if router["ready"] else {"ready": False, "reason": router["reason"]}


def deployment_show(endpoint: str, deployment: str) -> dict[str, Any]:
    """What ``deployment show`` prints: Serve's progress of the deployment and its readiness."""
    state = load_state(endpoint)
    if deployment not in state["deployments"]:
        raise VisionsweepError(f"no deployment named {deployment!r} in {endpoint} (deployments: "
                               f"{', '.join(sorted(state['deployments'])) or 'none'})")
    progress = deployment_progress(state, deployment, _app_status(endpoint))
    router = readiness(state, [deployment] if progress["replicas_running"] else [])
    return {**progress, **deployment_readiness(progress, None if router is None else router.get(deployment))}


def summary(endpoint: str, scoring_uri: str) -> dict[str, Any]:
    """What ``endpoint show`` prints: the endpoint, each deployment's progress and readiness, traffic, mirror."""
    state = load_state(endpoint)
    app = _app_status(endpoint) if state["deployments"] else None
    progress = {n: deployment_progress(state, n, app) for n in state["deployments"]}
    router = readiness(state, [n for n, p in progress.items() if p["replicas_running"]])
    deployments = {}
    for n, p in progress.items():
        deployments[n] = {"status": p["status"], "replicas": f"{p['replicas_running']}/{p['replicas_target']}",
                          **deployment_readiness(p, None if router is None else router.get(n)),
                          **({"message": p["message"]} if p["message"] and p["status"] != "HEALTHY" else {})}
    return {"name": endpoint, "scoring_uri": scoring_uri, "auth_mode": state["endpoint"]["auth_mode"],
            "deployments": deployments, "traffic": state["traffic"], "mirror": state["mirror"]}

"""Endpoints and their deployments: stored state, keys, traffic, and (re)deploying on Ray Serve.

State lives in ``$VISIONSWEEP_HOME/endpoints/<name>.json`` (default ``~/.visionsweep``), written with
owner-only permissions because it holds the endpoint's keys, the only place they are kept: the router is
given salted digests of them (``serving.keys``). Every change is validated first, then
stored, then applied with ``serve.run`` of the endpoint's application: traffic, mirror and key changes
only reconfigure the running router; adding or removing a deployment rolls the router over while
in-flight requests finish.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from serving.keys import key_check, new_key, new_salt
from serving.specs import DeploymentSpec, EndpointSpec, check_traffic
from trainers.errors import SpecError, VisionsweepError
from trainers.package.references import default_registry_uri, fetch_registered, is_registry_reference, pin_registered


def home() -> Path:
    return Path(os.environ.get("VISIONSWEEP_HOME", Path.home() / ".visionsweep"))


def _path(name: str) -> Path:
    return home() / "endpoints" / f"{name}.json"


def load_state(name: str) -> dict[str, Any]:
    p = _path(name)
    if not p.is_file():
        raise VisionsweepError(f"no endpoint named {name!r} (create it with `visionsweep endpoint create`)")
    return json.loads(p.read_text())


def save_state(state: dict[str, Any]) -> None:
    p = _path(state["endpoint"]["name"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    tmp.replace(p)


def router_config(state: dict[str, Any]) -> dict[str, Any]:
    """The router's ``user_config``: shown by Ray's dashboard and Serve's REST API, so no key in it, only
    digests under the endpoint's salt (made here for a state file written before there was one)."""
    salt = state.setdefault("key_salt", new_salt())
    return {"traffic": state["traffic"], "mirror": state["mirror"], "auth_mode": state["endpoint"]["auth_mode"],
            "key_check": key_check([state["keys"]["primary"], state["keys"]["secondary"]], salt)}


def apply(state: dict[str, Any], blocking_wait_s: float = 300) -> None:
    """Deploy (or update) the endpoint's Serve application from its state."""
    from ray import serve

    from serving.app import build_app

    name = state["endpoint"]["name"]
    if not state["deployments"]:
        try:
            serve.delete(name)
        except Exception:
            pass
        return
    app = build_app(name, state["deployments"], router_config(state))
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    _wait_running(name, blocking_wait_s)


def _wait_running(name: str, timeout_s: float) -> None:
    import time

    from ray import serve

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = serve.status().applications.get(name)
        if st is not None and str(st.status).endswith("RUNNING"):
            return
        if st is not None and str(st.status).endswith("DEPLOY_FAILED"):
            raise VisionsweepError(f"endpoint {name}: deployment failed: {st.message}")
        time.sleep(0.5)
    raise VisionsweepError(f"endpoint {name}: not running after {timeout_s:.0f}s")


# --- operations -----------------------------------------------------------------------------------

def create_endpoint(spec: EndpointSpec) -> dict[str, Any]:
    if _path(spec.name).is_file():
        raise VisionsweepError(f"endpoint {spec.name!r} exists already (use `visionsweep endpoint update`)")
    state = {"endpoint": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
             "keys": {"primary": new_key(), "secondary": new_key()}, "key_salt": new_salt(),
             "deployments": {}, "traffic": {}, "mirror": {}}
    save_state(state)
    return state


def create_deployment(spec: DeploymentSpec, update: bool = False) -> dict[str, Any]:
    state = load_state(spec.endpoint_name)
    exists = spec.name in state["deployments"]
    if exists and not update:
        raise VisionsweepError(f"deployment {spec.name!r} exists already in {spec.endpoint_name} "
                               "(use `visionsweep deployment update`)")
    if update and not exists:
        raise VisionsweepError(f"no deployment named {spec.name!r} in {spec.endpoint_name}")
    d = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    d["num_gpus"] = spec.num_gpus
    if is_registry_reference(spec.model):
        # Resolve the reference now, where the user's environment is, so a wrong name/version or registry is
        # an error of this command; the replicas fetch the same version from the same registry.
        registry = spec.model_registry_uri or default_registry_uri()
        if not registry:
            raise VisionsweepError(f"deployment {spec.name}: model {spec.model} is a registry reference; set "
                                   "MLFLOW_TRACKING_URI or model_registry_uri to the MLflow registry holding it")
        d["model_registry_uri"], d["model_reference"] = registry, spec.model
        d["model"] = pin_registered(spec.model, registry)
        with tempfile.TemporaryDirectory(prefix="visionsweep-pkg-") as tmp:
            if not (fetch_registered(d["model"], tmp, registry) / "model.json").is_file():
                raise VisionsweepError(f"deployment {spec.name}: {spec.model} ({d['model']}) is registered, but its "
                                       "files are not a model package (no model.json)")
    state["deployments"][spec.name] = d
    state["traffic"].setdefault(spec.name, 0)  # a new deployment starts at 0 % (§9.3)
    apply(state)
    save_state(state)
    return state


def delete_deployment(endpoint: str, name: str) -> dict[str, Any]:
    state = load_state(endpoint)
    if name not in state["deployments"]:
        raise VisionsweepError(f"no deployment named {name!r} in {endpoint}")
    if state["traffic"].get(name, 0) > 0:
        raise SpecError(f"deployment {name} still receives {state['traffic'][name]} % of traffic; "
                        "set it to 0 first")
    del state["deployments"][name]
    state["traffic"].pop(name, None)
    state["mirror"].pop(name, None)
    apply(state)
    save_state(state)
    return state


def set_traffic(endpoint: str, traffic: dict[str, int] | None = None,
                mirror: dict[str, int] | None = None) -> dict[str, Any]:
    state = load_state(endpoint)
    names = set(state["deployments"])
    if traffic is not None:
        state["traffic"] = {**{n: 0 for n in names}, **check_traffic(traffic, names)}
    if mirror is not None:
        check_traffic(mirror, names, "mirror")
        for n, p in mirror.items():
            if p and state["traffic"].get(n, 0) > 0:
                raise SpecError(f"mirror: {n} receives live traffic; mirror traffic goes to a deployment at 0 %")
        state["mirror"] = {n: p for n, p in mirror.items() if p}
    apply(state)
    save_state(state)
    return state


def regenerate_keys(endpoint: str, which: str = "primary") -> dict[str, Any]:
    if which not in ("primary", "secondary"):
        raise SpecError(f"--key-type: expected primary or secondary, but got {which!r}")
    state = load_state(endpoint)
    state["keys"][which] = new_key()
    apply(state)
    save_state(state)
    return state


def delete_endpoint(endpoint: str) -> None:
    from ray import serve

    load_state(endpoint)
    try:
        serve.delete(endpoint)
    finally:
        _path(endpoint).unlink(missing_ok=True)


def show(endpoint: str) -> dict[str, Any]:
    """The endpoint without its keys (nor their salt)."""
    state = load_state(endpoint)
    return {k: v for k, v in state.items() if k not in ("keys", "key_salt")}

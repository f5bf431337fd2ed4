"""``MLClient``: the service SDK's client, over Ray. ``jobs`` submits and follows sweeps (``visionsweep.jobs``);
``online_endpoints`` / ``online_deployments`` make keyed endpoints with weighted deployments on the cluster's Ray
Serve (``serving.endpoints``, the same state the ``visionsweep endpoint`` commands read and write)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.errors import VisionsweepError
from visionsweep.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
from visionsweep.jobs import JobOperations


@dataclass
class EndpointAuthKeys:
    primary_key: str
    secondary_key: str


class _Done:
    """What a ``begin_*`` call returns: the change has been made when the call returns (the service's poller
    waits for it; so does this one, before returning), ``result()`` gives the entity."""

    def __init__(self, value: Any = None):
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> None:
        return None

    def status(self) -> str:
        return "Succeeded"


def _connect(serve: bool = True) -> None:
    from serving.connection import connect_cluster

    connect_cluster(serve=serve)


def _scoring_uri(name: str) -> str:
    from serving.connection import http_address

    host, port = http_address()
    return f"http://{host}:{port}/{name}/score"


class OnlineEndpointOperations:
    """``ml_client.online_endpoints``."""

    def begin_create_or_update(self, endpoint: ManagedOnlineEndpoint) -> _Done:
        """Create the endpoint (new keys), or apply its ``traffic`` / ``mirror_traffic`` if it exists."""
        from serving import endpoints

        spec = endpoint._spec()
        _connect(serve=False)
        if spec.name not in endpoints.list_endpoints():
            endpoints.create_endpoint(spec)
        if endpoint.traffic is not None or endpoint.mirror_traffic is not None:
            _connect()
            endpoints.set_traffic(spec.name, endpoint.traffic, endpoint.mirror_traffic)
        return _Done(self.get(spec.name))

    def get(self, name: str) -> ManagedOnlineEndpoint:
        """The endpoint as stored: auth mode, traffic, mirror, scoring URI."""
        from serving import endpoints

        _connect(serve=False)
        state = endpoints.load_state(name)
        ep = state["endpoint"]
        out = ManagedOnlineEndpoint(ep["name"], auth_mode=ep.get("auth_mode", "key"), description=ep.get("description"),
                                    tags=ep.get("tags") or None, traffic=dict(state["traffic"]),
                                    mirror_traffic=dict(state["mirror"]))
        out.scoring_uri, out.provisioning_state = _scoring_uri(name), "Succeeded"
        return out

    def list(self) -> list[ManagedOnlineEndpoint]:
        from serving import endpoints

        _connect(serve=False)
        return [self.get(n) for n in endpoints.list_endpoints()]

    def get_keys(self, name: str) -> EndpointAuthKeys:
        from serving import endpoints

        _connect(serve=False)
        keys = endpoints.load_state(name)["keys"]
        return EndpointAuthKeys(primary_key=keys["primary"], secondary_key=keys["secondary"])

    def begin_regenerate_keys(self, name: str, *, key_type: str = "primary") -> _Done:
        from serving import endpoints

        _connect()
        endpoints.regenerate_keys(name, key_type)
        return _Done()

    def invoke(self, endpoint_name: str, *, request_file: str | Path, deployment_name: str | None = None,
               timeout: float = 300) -> str:
        """POST the request file to the endpoint (with its primary key; to ``deployment_name`` alone if given)
        and return the response body; an error response raises :class:`VisionsweepError` with its status."""
        ep = self.get(endpoint_name)
        headers = {"Content-Type": "application/json"}
        if ep.auth_mode == "key":
            headers["Authorization"] = f"Bearer {self.get_keys(endpoint_name).primary_key}"
        body = Path(request_file).read_bytes()
        if deployment_name:
            headers["azureml-model-deployment"] = deployment_name
        req = urllib.request.Request(ep.scoring_uri, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            answer = e.read().decode(errors="replace")[:500]
            raise VisionsweepError(f"endpoint {endpoint_name}: HTTP {e.code}: {answer}") from None

    def begin_delete(self, name: str) -> _Done:
        from serving import endpoints

        _connect()
        endpoints.delete_endpoint(name)
        return _Done()


class OnlineDeploymentOperations:
    """``ml_client.online_deployments``."""

    def begin_create_or_update(self, deployment: ManagedOnlineDeployment) -> _Done:
        """Create the deployment (at 0 % traffic, as the service) or update it, and wait until its replicas run
        (``$VISIONSWEEP_DEPLOY_TIMEOUT_S``, default 300 s; a deployment that cannot run is rolled back and the
        error says why)."""
        from serving import endpoints

        spec = deployment._spec()
        _connect()
        exists = spec.name in endpoints.load_state(spec.endpoint_name)["deployments"]
        endpoints.create_deployment(spec, update=exists)
        return _Done(deployment)

    def get(self, name: str, endpoint_name: str) -> dict[str, Any]:
        """The deployment's progress: Serve's status and replicas running / target."""
        from serving import endpoints

        _connect()
        state = endpoints.load_state(endpoint_name)
        if name not in state["deployments"]:
            raise VisionsweepError(f"no deployment named {name!r} in {endpoint_name}")
        return endpoints.deployment_progress(state, name, endpoints._app_status(endpoint_name))

    def begin_delete(self, name: str, endpoint_name: str) -> _Done:
        from serving import endpoints

        _connect()
        endpoints.delete_deployment(endpoint_name, name)
        return _Done()


def jobs_api_address() -> str | None:
    """The cluster's Jobs API, where ``ray job submit`` finds it: ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``
    when it is an ``http(s)://`` address."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        v = os.environ.get(var, "")
        if v.startswith(("http://", "https://")):
            return v
    return None


class MLClient:
    """The notebook's client. The service's arguments (credential, subscription, resource group, workspace) are
    accepted so the cell runs unchanged, and name nothing here. Jobs go to the Ray cluster's Jobs API
    (:func:`jobs_api_address`, as ``ray job submit``); without one they run in a process on this machine, on the
    cluster of a ``RAY_ADDRESS`` (``host:6379``) or an embedded local Ray. Endpoints live on the Ray cluster's
    Serve (``RAY_ADDRESS``, else the local cluster ``ray start --head`` started).

    Args:
        ray_address: the Jobs API address (default: :func:`jobs_api_address`).
    """

    def __init__(self, credential: Any = None, subscription_id: str | None = None,
                 resource_group_name: str | None = None, workspace_name: str | None = None, *,
                 ray_address: str | None = None):
        self.ray_address = ray_address or jobs_api_address()
        self.workspace_name = workspace_name
        self.jobs = JobOperations(self.ray_address)
        self.online_endpoints = OnlineEndpointOperations()
        self.online_deployments = OnlineDeploymentOperations()

    @classmethod
    def from_config(cls, credential: Any = None, path: str | None = None) -> MLClient:
        """The service reads the workspace from ``config.json``; here there is no workspace to read."""
        return cls(credential)

    def create_or_update(self, entity: Any, **kwargs: Any) -> Any:
        """A job (``jobs.create_or_update``, which names the arguments it takes)."""
        return self.jobs.create_or_update(entity, **kwargs)

    def begin_create_or_update(self, entity: Any) -> _Done:
        """An endpoint or a deployment (as ``online_endpoints`` / ``online_deployments``)."""
        if isinstance(entity, ManagedOnlineEndpoint):
            return self.online_endpoints.begin_create_or_update(entity)
        if isinstance(entity, ManagedOnlineDeployment):
            return self.online_deployments.begin_create_or_update(entity)
        raise TypeError(f"begin_create_or_update: expected a ManagedOnlineEndpoint or ManagedOnlineDeployment, "
                        f"but got {type(entity).__name__}")

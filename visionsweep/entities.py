"""The service SDK's online-endpoint entities (``azure.ai.ml.entities``) as the endpoint and deployment files of
``visionsweep endpoint`` / ``deployment`` (``serving.specs``): each object writes that file's mapping and is
validated by it, so a notebook's endpoint cells and the CLI's YAML make the same endpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any


@dataclass
class ProbeSettings:
    """A liveness or readiness probe (§9.3): seconds, except ``initial_delay`` in milliseconds (as the service)."""

    failure_threshold: int | None = None
    success_threshold: int | None = None
    timeout: float | None = None
    period: float | None = None
    initial_delay: float | None = None


@dataclass
class OnlineRequestSettings:
    """``request_timeout_ms`` (at most 180000; explanations need long ones) and the concurrent requests a replica
    takes."""

    request_timeout_ms: int | None = None
    max_concurrent_requests_per_instance: int | None = None


@dataclass
class TargetUtilizationScaleSettings:
    """Autoscaling between ``min_instances`` and ``max_instances`` on ongoing requests per replica."""

    min_instances: int | None = None
    max_instances: int | None = None
    target_ongoing_requests: float | None = None
    type: str = "target_utilization"


@dataclass
class DefaultScaleSettings:
    type: str = "default"


@dataclass
class Model:
    """A model for a deployment: ``path`` (a model package folder or URI; a run's ``best/``) or a registered
    ``name`` and ``version`` (``id`` is then ``azureml:name:version``, resolved in the MLflow registry at
    ``MLFLOW_TRACKING_URI``). ``type`` and ``description`` are taken as the notebook gives them and change nothing:
    every package is an MLflow model."""

    path: str | None = None
    name: str | None = None
    version: str | None = None
    type: str | None = None
    description: str | None = None

    @property
    def id(self) -> str:
        if self.name and self.version:
            return f"azureml:{self.name}:{self.version}"
        if self.path:
            return str(self.path)
        raise ValueError("Model: give path, or name and version")


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class ManagedOnlineEndpoint:
    """An endpoint: ``name`` (2-32 letters, digits, dashes), ``auth_mode`` ``key`` (default; requests carry
    ``Authorization: Bearer KEY``) or ``none``; ``traffic`` the percentage per deployment once deployments exist
    (``ml_client.begin_create_or_update(endpoint)`` applies it), ``mirror_traffic`` copies of requests."""

    def __init__(self, name: str, *, auth_mode: str = "key", description: str | None = None,
                 tags: dict[str, Any] | None = None, traffic: dict[str, int] | None = None,
                 mirror_traffic: dict[str, int] | None = None):
        self.name, self.auth_mode, self.description, self.tags = name, auth_mode, description, tags
        self.traffic, self.mirror_traffic = traffic, mirror_traffic
        self.scoring_uri: str | None = None
        self.provisioning_state: str | None = None

    def _to_yaml(self) -> dict[str, Any]:
        return _clean({"name": self.name, "auth_mode": self.auth_mode, "description": self.description,
                       "tags": self.tags})

    def _spec(self):
        from serving.specs import EndpointSpec, validate_spec

        return validate_spec(EndpointSpec, self._to_yaml(), "ManagedOnlineEndpoint")

    def __repr__(self) -> str:
        return (f"ManagedOnlineEndpoint(name={self.name!r}, auth_mode={self.auth_mode!r}, traffic={self.traffic!r}, "
                f"scoring_uri={self.scoring_uri!r})")


class ManagedOnlineDeployment:
    """A deployment of a model on an endpoint; arguments as the deployment file's keys (§9.3). ``model`` is a
    package path or URI, a registry reference (``azureml:name:version``, ``models:/name/version``) or a
    :class:`Model`. ``instance_type`` ``cpu``/``gpu`` or a cloud SKU (``Standard_NC6s_v3`` -> a GPU).
    visionsweep's own: ``cpus_per_instance`` (default 0.5), ``batching``, ``inference_settings``."""

    def __init__(self, name: str, *, endpoint_name: str, model: Any, instance_type: str | None = None,
                 instance_count: int | None = None, liveness_probe: ProbeSettings | None = None,
                 readiness_probe: ProbeSettings | None = None, request_settings: OnlineRequestSettings | None = None,
                 scale_settings: Any = None, description: str | None = None, tags: dict[str, Any] | None = None,
                 cpus_per_instance: float | None = None, batching: dict[str, Any] | None = None,
                 inference_settings: dict[str, Any] | None = None, model_registry_uri: str | None = None):
        self.name, self.endpoint_name, self.model = name, endpoint_name, model
        self.instance_type, self.instance_count = instance_type, instance_count
        self.liveness_probe, self.readiness_probe = liveness_probe, readiness_probe
        self.request_settings, self.scale_settings = request_settings, scale_settings
        self.description, self.tags = description, tags
        self.cpus_per_instance, self.batching, self.inference_settings = cpus_per_instance, batching, inference_settings
        self.model_registry_uri = model_registry_uri

    def _to_yaml(self) -> dict[str, Any]:
        model = self.model.id if isinstance(self.model, Model) else str(self.model)
        nested = {k: _clean(asdict(v)) if is_dataclass(v) else v
                  for k, v in (("liveness_probe", self.liveness_probe), ("readiness_probe", self.readiness_probe),
                               ("request_settings", self.request_settings), ("scale_settings", self.scale_settings))}
        return _clean({"name": self.name, "endpoint_name": self.endpoint_name, "model": model,
                       "model_registry_uri": self.model_registry_uri, "instance_type": self.instance_type,
                       "instance_count": self.instance_count, **nested, "description": self.description,
                       "tags": self.tags, "cpus_per_instance": self.cpus_per_instance, "batching": self.batching,
                       "inference_settings": self.inference_settings})

    def _spec(self):
        from serving.specs import DeploymentSpec, local_model_path, validate_spec

        spec = validate_spec(DeploymentSpec, self._to_yaml(), "ManagedOnlineDeployment")
        return spec.model_copy(update={"model": local_model_path(spec.model, Path.cwd())})

    def __repr__(self) -> str:
        return (f"ManagedOnlineDeployment(name={self.name!r}, endpoint_name={self.endpoint_name!r}, "
                f"model={self.model!r})")

"""Endpoint and deployment files in the managed service's YAML shape (SPEC §9.3), and traffic rules.

Endpoint::
    name: fridge-items-endpoint
    auth_mode: key            # or none, by explicit choice

Deployment::
    name: blue
    endpoint_name: fridge-items-endpoint
    model: runs/my-run/best   # a model package folder or URI
    instance_type: cpu        # cpu | gpu | a cloud SKU name (Standard_NC6 -> gpu, other -> cpu)
    instance_count: 1         # replicas
    liveness_probe: {failure_threshold: 30, success_threshold: 1, timeout: 2, period: 10, initial_delay: 2000}
    readiness_probe: {failure_threshold: 10, success_threshold: 1, timeout: 10, period: 10, initial_delay: 2000}
    request_settings: {request_timeout_ms: 90000, max_concurrent_requests_per_instance: 8}
    scale_settings: {type: target_utilization, min_instances: 1, max_instances: 4, target_ongoing_requests: 4}
    batching: {max_batch_size: 8, batch_wait_timeout_s: 0.01}     # visionsweep's own
    inference_settings: {validation_crop_size: 224}              # overrides the package's settings.json
    cpus_per_instance: 0.5    # CPU cores reserved per replica (Ray's CPU unit; fractions allowed), visionsweep's own
    runtime: pytorch          # pytorch | onnx | onnx-int8: what runs the package's model, visionsweep's own

Traffic: a new deployment starts at 0 %; weights are integers 0..100 whose sum is at most 100.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.errors import SpecError

_F = ConfigDict(extra="forbid")
_NAME = r"^[a-zA-Z][a-zA-Z0-9-]{1,31}$"


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Optional[str] = Field(None, alias="$schema")
    name: str = Field(pattern=_NAME)
    auth_mode: Literal["key", "none"] = "key"
    description: Optional[str] = None
    tags: dict[str, Any] = Field(default_factory=dict)


class Probe(BaseModel):
    """A probe (§9.3); times in seconds except ``initial_delay`` (milliseconds, as in the service)."""

    model_config = _F
    failure_threshold: int = Field(30, ge=1)
    success_threshold: int = Field(1, ge=1)
    timeout: float = Field(2, gt=0)
    period: float = Field(10, gt=0)
    initial_delay: float = Field(0, ge=0)


MAX_REQUEST_TIMEOUT_MS = 180000
DEFAULT_CPUS_PER_INSTANCE = 0.5


class RequestSettings(BaseModel):
    model_config = _F
    request_timeout_ms: int = Field(90000, ge=1, le=MAX_REQUEST_TIMEOUT_MS)
    max_concurrent_requests_per_instance: int = Field(8, ge=1)


class ScaleSettings(BaseModel):
    model_config = _F
    type: Literal["default", "target_utilization"] = "default"
    min_instances: int = Field(1, ge=0)
    max_instances: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)


class Batching(BaseModel):
    model_config = _F
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5)


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Optional[str] = Field(None, alias="$schema")
    name: str = Field(pattern=_NAME)
    endpoint_name: str = Field(pattern=_NAME)
    model: str = Field(min_length=1)
    # for a registry reference (models:/..., azureml:name:version): the MLflow registry to resolve it in
    # (default: $MLFLOW_TRACKING_URI when the deployment is created)
    model_registry_uri: Optional[str] = None
    instance_type: str = "cpu"
    instance_count: int = Field(1, ge=1, le=64)
    liveness_probe: Probe = Field(default_factory=lambda: Probe(failure_threshold=30, timeout=2))
    readiness_probe: Probe = Field(default_factory=lambda: Probe(failure_threshold=10, timeout=10))
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    scale_settings: ScaleSettings = Field(default_factory=ScaleSettings)
    batching: Batching = Field(default_factory=Batching)
    inference_settings: dict[str, Any] = Field(default_factory=dict)
    # CPU cores Ray reserves for each replica (fractions allowed). 0.5 lets two deployments (blue and green)
    # and the endpoint's router (0.1) fit a 2-core `ray start --head` with room to spare; a replica uses
    # max(1, round(cpus_per_instance)) torch threads.
    cpus_per_instance: float = Field(DEFAULT_CPUS_PER_INSTANCE, gt=0)
    # what runs the model (``serving.onnx_runtime``): the package's PyTorch model, or its ONNX / INT8 ONNX graph
    # under onnxruntime; the request and response JSON are the same
    runtime: Literal["pytorch", "onnx", "onnx-int8"] = "pytorch"
    description: Optional[str] = None
    tags: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_gpus(self) -> float:
        t = self.instance_type.lower()
        return 1.0 if t == "gpu" or re.search(r"(^|_)n[cdv]", t) else 0.0


def _load(path: str | Path, model):
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SpecError(f"{p}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML ({e})") from None
    return validate_spec(model, data, str(p))


def validate_spec(model, data: Any, source: str):
    """An endpoint or deployment mapping validated; the error names ``source`` (a file, or the Python object that
    wrote the mapping) and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "<top>"
        kind = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise SpecError(f"{source}: {where}: {kind}" + (f", but got {err.get('input')!r}"
                                                        if err["type"] not in ("extra_forbidden", "missing")
                                                        else "")) from None


def load_endpoint(path: str | Path) -> EndpointSpec:
    return _load(path, EndpointSpec)


def load_deployment(path: str | Path) -> DeploymentSpec:
    """A deployment file; a relative local ``model`` path is relative to the file (replicas may run elsewhere)."""
    spec = _load(path, DeploymentSpec)
    return spec.model_copy(update={"model": local_model_path(spec.model, Path(path).resolve().parent)})


def local_model_path(model: str, base: Path) -> str:
    """``model`` as an absolute path when it is a local path; URIs and registry references unchanged."""
    # imported here: ``trainers.package`` loads torch and torchvision (seconds), which the endpoint commands
    # that only read state (``endpoint show``, ``deployment show``) must not wait for
    from trainers.data.urls import is_url
    from trainers.package.references import is_registry_reference

    if is_url(model) or is_registry_reference(model):
        return model
    return str((base / model).resolve())


def parse_traffic(text: str) -> dict[str, int]:
    """``blue=90,green=10`` -> {"blue": 90, "green": 10}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*)\s*=\s*(\d+)", part)
        if not m:
            raise SpecError(f"traffic: expected NAME=PERCENT[,NAME=PERCENT...], but got {part!r}")
        out[m.group(1)] = int(m.group(2))
    return out


def check_traffic(traffic: dict[str, int], deployments: set[str], what: str = "traffic") -> dict[str, int]:
    """The spec's rules: known deployments, 0..100 each, sum <= 100 (§9.3)."""
    for name, w in traffic.items():
        if name not in deployments:
            raise SpecError(f"{what}: no deployment named {name!r} "
                            f"(deployments: {', '.join(sorted(deployments)) or 'none'})")
        if not 0 <= w <= 100:
            raise SpecError(f"{what}: {name}={w}: expected a percentage between 0 and 100")
    if what == "traffic" and sum(traffic.values()) > 100:
        raise SpecError(f"traffic: the weights sum to {sum(traffic.values())}; at most 100 is allowed")
    return traffic

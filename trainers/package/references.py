"""Model-registry references as a deployment's (or ``predict``'s) model (SPEC §9.2, §9.3).

Accepted forms: MLflow's ``models:/<name>/<version>``, ``models:/<name>/latest``, ``models:/<name>@<alias>``,
and the managed service's ``azureml:<name>:<version>`` / ``azureml:<name>@latest`` / ``azureml:<name>@<alias>``
(the same registered model, as a migrating user writes it). They are resolved in the MLflow registry at
``registry_uri`` (default ``$MLFLOW_REGISTRY_URI``, then ``$MLFLOW_TRACKING_URI``); a registered version's
artifacts are a model package (``scheduler.tracking`` registers the best package that way).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trainers.errors import VisionsweepError


def is_registry_reference(ref: str) -> bool:
    return ref.startswith(("models:/", "azureml:")) and not ref.startswith("azureml://")


def registry_model_uri(ref: str) -> str:
    """``azureml:name:version`` / ``azureml:name@latest`` -> MLflow's ``models:/`` form; ``models:/`` unchanged."""
    if ref.startswith("models:/"):
        return ref
    m = re.fullmatch(r"azureml:([A-Za-z0-9_.\-]+)(?::(\d+)|@([A-Za-z0-9_\-]+))", ref)
    if not m:
        raise VisionsweepError(f"model {ref!r}: expected azureml:<name>:<version> or azureml:<name>@latest "
                               "(or models:/<name>/<version>)")
    name, version, label = m.groups()
    if version:
        return f"models:/{name}/{version}"
    return f"models:/{name}/latest" if label == "latest" else f"models:/{name}@{label}"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _pin(ref: str, registry_uri: str) -> tuple[str, str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"models:/([^/@]+)(?:/([^/@]+)|@([^/@]+))", registry_model_uri(ref))
    if not m:
        raise VisionsweepError(f"model {ref}: expected models:/<name>/<version>, models:/<name>/latest or "
                               "models:/<name>@<alias>")
    name, version, alias = m.groups()
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    try:
        if version and version.isdigit():
            return name, str(client.get_model_version(name, version).version)
        if alias:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
    except MlflowException as e:
        raise VisionsweepError(f"model {ref}: not in the registry at {registry_uri} ({_first_line(e)})") from None
    if version != "latest" or not versions:
        raise VisionsweepError(f"model {ref}: no version {version!r} of registered model {name!r} "
                               f"in the registry at {registry_uri}")
    return name, str(max(versions))


def pin_registered(ref: str, registry_uri: str) -> str:
    """``models:/name/<version>`` for a reference, with ``latest`` or an alias resolved to today's version, so
    that every replica of a deployment serves the same version, also those started later."""
    return "models:/{}/{}".format(*_pin(ref, registry_uri))


def default_registry_uri() -> str | None:
    return os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")


def fetch_registered(ref: str, dst: str | Path, registry_uri: str | None = None) -> Path:
    """Download a registered model version's package files under ``dst`` (the caller's folder, which it
    removes); returns the package folder.

    The version's artifact location is asked of the registry named here, never of MLflow's process-wide
    default (which would be ``./mlflow.db`` in a Serve replica that did not inherit the user's environment).
    """
    registry = registry_uri or default_registry_uri()
    if not registry:
        raise VisionsweepError(f"model {ref}: a registry reference needs the MLflow registry's URI "
                               "(set MLFLOW_TRACKING_URI, or model_registry_uri in the deployment)")
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version = _pin(ref, registry)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a package is a handful of files
    try:
        source = MlflowClient(tracking_uri=registry, registry_uri=registry).get_model_version_download_uri(
            name, version)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=registry,
                                                        dst_path=str(dst)))
    except (MlflowException, OSError) as e:
        raise VisionsweepError(f"model {ref}: cannot fetch version {version} of {name} from the registry at "
                               f"{registry} ({_first_line(e)})") from None

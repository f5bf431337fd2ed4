"""Model-registry references as a deployment's model (§9.2, §9.3): MLflow's real sqlite-backed registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.errors import VisionsweepError
from trainers.package.references import fetch_registered, pin_registered, registry_model_uri


def register(registry: str, package: Path, name: str) -> str:
    """Log a package as a run's artifacts and register it, as ``visionsweep.tracking.register_model`` does."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    try:
        exp = client.create_experiment("registry-test", artifact_location=str(Path(registry[10:]).parent / "art"))
    except Exception:
        exp = client.get_experiment_by_name("registry-test").experiment_id
    run = client.create_run(exp).info.run_id
    client.log_artifacts(run, str(package), artifact_path="best_model")
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    return str(client.create_model_version(name, f"runs:/{run}/best_model", run_id=run).version)


def test_the_managed_services_reference_forms_map_to_mlflow_uris():
    assert registry_model_uri("azureml:fashion:3") == "models:/fashion/3"
    assert registry_model_uri("azureml:fashion@latest") == "models:/fashion/latest"
    assert registry_model_uri("azureml:fashion@champion") == "models:/fashion@champion"
    assert registry_model_uri("models:/fashion/2") == "models:/fashion/2"
    with pytest.raises(VisionsweepError, match="expected azureml:<name>:<version>"):
        registry_model_uri("azureml:fashion")


def test_references_are_pinned_fetched_and_served(tmp_path, classifier, monkeypatch):
    from serving.predictor import Predictor

    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register(registry, classifier, "fashion") == "1"
    assert register(registry, classifier, "fashion") == "2"
    assert pin_registered("azureml:fashion@latest", registry) == "models:/fashion/2"
    assert pin_registered("models:/fashion/1", registry) == "models:/fashion/1"
    files = {p.name for p in fetch_registered("azureml:fashion:1", tmp_path / "dl", registry).iterdir()}
    assert {"model.safetensors", "model.json", "labels.json", "settings.json"} <= files
    # the registry comes from MLFLOW_TRACKING_URI when not given
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    image = (Path(__file__).resolve().parent.parent / "trainers" / "sample_data" / "fashion_mnist" / "images"
             / "test_0000.png").read_bytes()
    (out,) = Predictor("azureml:fashion:2", device="cpu").predict_images([image])
    assert out["labels"] == ["a", "b", "c"] and len(out["probs"]) == 3


def test_a_wrong_reference_names_the_model_and_the_registry(tmp_path, classifier, monkeypatch):
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(registry, classifier, "fashion")
    with pytest.raises(VisionsweepError, match=r"model azureml:fashion:7: not in the registry at sqlite:.*mlflow.db"):
        fetch_registered("azureml:fashion:7", tmp_path / "dl", registry)
    with pytest.raises(VisionsweepError, match="model azureml:fashion:7: not in the registry"):
        pin_registered("azureml:fashion:7", registry)
    with pytest.raises(VisionsweepError, match="model models:/shoes/latest"):
        pin_registered("models:/shoes/latest", registry)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(VisionsweepError, match="set MLFLOW_TRACKING_URI"):
        fetch_registered("azureml:fashion:1", tmp_path / "dl")

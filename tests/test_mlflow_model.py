"""Every model package is an MLflow model (pyfunc): MLflow's own loader and CLI answer the §15 bodies."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile

import pandas as pd
import pytest

from serving.predictor import Predictor
from tests.test_registry import register
from trainers.errors import DataError


def _images(sample, n=2) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample / "images").glob("*.png"))[:n]]


def test_mlflow_loads_a_package_and_predicts_what_the_endpoint_would(classifier, sample, tmp_path, monkeypatch):
    import mlflow.pyfunc

    package = classifier

    images = _images(sample)
    expected = Predictor(str(package), device="cpu").predict_images(images)
    model = mlflow.pyfunc.load_model(str(package))
    frame = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in images]})
    got = model.predict(frame)
    assert [g["labels"] for g in got] == [e["labels"] for e in expected] == [["a", "b", "c"]] * 2
    assert sum((g["probs"] for g in got), []) == pytest.approx(sum((e["probs"] for e in expected), []), abs=1e-6)
    with pytest.raises(DataError, match="image 0: not base64"):
        model.predict(pd.DataFrame({"image": ["%%%"]}))

    # a registered version is that MLflow model too
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register(registry, package, "fashion")
    mlflow.set_tracking_uri(registry)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # MLflow downloads it to a mkdtemp it never removes
    registered = mlflow.pyfunc.load_model(f"models:/fashion/{version}")
    assert registered.predict(frame)[0]["probs"] == pytest.approx(expected[0]["probs"], abs=1e-6)


def test_mlflow_models_predict_on_a_package(classifier, sample, tmp_path):
    package = classifier
    images = _images(sample)
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in images]}}
    (tmp_path / "in.json").write_text(json.dumps(body))
    subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", str(package), "-i",
                    str(tmp_path / "in.json"), "-t", "json", "-o", str(tmp_path / "out.json"),
                    "--env-manager", "local"], check=True, capture_output=True, text=True)
    out = json.loads((tmp_path / "out.json").read_text())["predictions"]
    expected = Predictor(str(package), device="cpu").predict_images(images)
    assert [o["labels"] for o in out] == [["a", "b", "c"]] * 2
    assert sum((o["probs"] for o in out), []) == pytest.approx(sum((e["probs"] for e in expected), []), abs=1e-5)


def test_the_services_mlflow_model_layout_loads_with_its_settings_in_artifacts(classifier, sample, tmp_path):
    """§9.1 / §12 #17: the service keeps a model as mlflow-model/ with artifacts/settings.json; scripts written
    for it edit that file. The layout loads everywhere a package does, with the edited settings."""
    import mlflow.pyfunc

    from trainers.package import load_package, write_service_layout

    dst = write_service_layout(classifier, tmp_path / "mlflow-model", "resnet18")
    assert (dst / "MLmodel").is_file() and (dst / "artifacts" / "settings.json").is_file()
    assert not (dst / "settings.json").exists() and "data: artifacts" in (dst / "MLmodel").read_text()
    images = _images(sample)
    expected = Predictor(str(classifier), device="cpu").predict_images(images)
    model = mlflow.pyfunc.load_model(str(dst))
    got = model.predict(pd.DataFrame({"image": [base64.b64encode(b).decode() for b in images]}))
    assert got[0]["probs"] == pytest.approx(expected[0]["probs"], abs=1e-6)
    settings = json.loads((dst / "artifacts" / "settings.json").read_text())
    settings.update(validation_resize_size=40, validation_crop_size=36)
    (dst / "artifacts" / "settings.json").write_text(json.dumps(settings))
    loaded = load_package(dst)
    assert (loaded.settings["validation_resize_size"], loaded.settings["validation_crop_size"]) == (40, 36)
    assert load_package(classifier).settings["validation_crop_size"] == 32  # the original package is untouched

"""Every model package is also an MLflow model (``python_function`` flavour), so MLflow's own tools load it:
``mlflow models predict -m PACKAGE``, ``mlflow models serve -m PACKAGE``, ``mlflow.pyfunc.load_model``, and
a registered version of it in the model registry.

The package folder *is* the model folder: ``save_package`` writes an ``MLmodel`` file naming this module as
the pyfunc loader (``data: .``, the package itself) and the environment files (``python_env.yaml``,
``conda.yaml``, ``requirements.txt``). Nothing is pickled: the loader builds the visionsweep ``Predictor``
from the package's safetensors and JSON (``trainers.package.mlflow_files`` writes the files), the same code the
Ray Serve endpoints run.

Input: the managed service's MLflow image models take a frame with one ``image`` column of base64-encoded
image files (``{"dataframe_split": {"columns": ["image"], "data": [["<b64>"], ...]}}`` over HTTP; also a
``{"image": [...]}`` mapping or a list of base64 strings / bytes). Output: one §15 response object per image,
in input order (``{"predictions": [...]}`` over HTTP).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from trainers.errors import DataError


def _load_pyfunc(data_path: str) -> PackageModel:
    """MLflow's pyfunc loader hook: ``data_path`` is the package folder."""
    return PackageModel(data_path)


class PackageModel:
    """A package behind MLflow's ``predict(model_input, params)``."""

    def __init__(self, path: str):
        from serving.predictor import Predictor

        self.predictor = Predictor(str(path))

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        images = [_decode(v, i) for i, v in enumerate(_images(model_input))]
        return self.predictor.predict_images(images)

    def unwrap_python_model(self) -> PackageModel:  # what MLflow's wrapper hands back
        return self


def _images(model_input: Any) -> list[Any]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - MLflow depends on pandas
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            if len(model_input.columns) != 1:
                raise DataError(f"expected a column named 'image' of base64-encoded images, but got columns "
                                f"{list(model_input.columns)}")
            return list(model_input.iloc[:, 0])
        return list(model_input["image"])
    if isinstance(model_input, dict):
        if "image" not in model_input:
            raise DataError(f"expected the key 'image' (base64-encoded images), but got {sorted(model_input)}")
        v = model_input["image"]
        return list(v) if not isinstance(v, (str, bytes)) else [v]
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    return list(model_input)


def _decode(v: Any, i: int) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if hasattr(v, "item"):  # a numpy scalar from a pandas/numpy column
        v = v.item()
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"image {i}: not base64 ({v[:20]!r}...)") from None
    raise DataError(f"image {i}: expected a base64 string or bytes, but got {type(v).__name__}")

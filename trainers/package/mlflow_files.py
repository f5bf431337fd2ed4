"""The MLflow model files of a model package: ``MLmodel`` (pyfunc flavour, loaded by ``serving.mlflow_model``)
and its environment (``python_env.yaml``, ``conda.yaml``, ``requirements.txt``).

Plain text written without importing MLflow, so every checkpoint carries them at no cost; the package's
own files are the model's data (``data: .``), nothing is pickled.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

from trainers import hyperparameters as hp

LOADER = "serving.mlflow_model"
FILES = ("MLmodel", "python_env.yaml", "conda.yaml", "requirements.txt")


@functools.lru_cache(maxsize=None)
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def write_mlflow_files(path: Path, model_name: str, created: str, data: str = ".") -> None:
    """The MLflow model files of a package at ``path`` (plain text; no MLflow import, so a checkpoint costs
    nothing extra). ``data``: where the package's files are, relative to ``path`` (``artifacts`` in the
    managed service's ``mlflow-model/`` layout)."""

    dists = ["visionsweep", "torch", "torchvision", "timm", "safetensors", "pillow", "numpy", "mlflow"]
    if hp.model_backend(model_name) == "huggingface":
        dists.append("transformers")
    reqs = [f"{d}=={v}" if (v := _version(d)) else d for d in dists]
    py = platform.python_version()
    (path / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (path / "python_env.yaml").write_text(f"python: {py}\nbuild_dependencies:\n  - pip\n"
                                          "dependencies:\n  - -r requirements.txt\n")
    (path / "conda.yaml").write_text(f"channels:\n  - conda-forge\ndependencies:\n  - python={py}\n  - pip\n"
                                     "  - pip:\n" + "".join(f"    - {r}\n" for r in reqs) + "name: visionsweep_env\n")
    mlflow_version = _version("mlflow")
    (path / "MLmodel").write_text(
        "flavors:\n"
        "  python_function:\n"
        f"    data: {data}\n"
        "    env:\n"
        "      conda: conda.yaml\n"
        "      virtualenv: python_env.yaml\n"
        f"    loader_module: {LOADER}\n"
        f"    python_version: {py}\n"
        + (f"mlflow_version: {mlflow_version}\n" if mlflow_version else "")
        + f"utc_time_created: '{created}'\n")

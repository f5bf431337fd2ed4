"""The model package and what leaves with it.

* ``folder``: the package itself, one folder that fully describes how to load and call a model
  (``save_package``, ``load_package``, ``copy_package``; re-exported here);
* ``mlflow_files``: the files that make a package an MLflow pyfunc model;
* ``onnx``: ``visionsweep export --format onnx``;
* ``references``: MLflow model-registry references (``models:/name/3``, ``azureml:name:3``) as a package.

``folder`` builds models, so it imports torch; the names re-exported from it are imported on first use
(``from trainers.package import load_package``), not with the package, so that importing ``references`` (which a
deployment spec or ``status`` needs without any model) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FILES", "FORMAT_VERSION", "SEGMENTATION_SETTINGS", "LoadedPackage", "copy_package",
           "inference_settings", "load_package", "package_root", "save_package", "write_service_layout"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("trainers.package.folder"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

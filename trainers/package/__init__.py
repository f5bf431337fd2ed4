"""The model package and what leaves with it.

* ``folder``: the package itself, one folder that fully describes how to load and call a model
  (``save_package``, ``load_package``; re-exported here);
* ``files``: which files a package holds, and copying them (``copy_package``, ``write_service_layout``; no torch);
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


# names whose module needs no torch (``files``: a sweep's driver copies best/ with them), and the rest (``folder``)
_LIGHT = {"FILES", "copy_package", "package_root", "write_service_layout"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = "trainers.package.files" if name in _LIGHT else "trainers.package.folder"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The model package and what leaves with it.

* ``folder``: the package itself, one folder that fully describes how to load and call a model
  (``save_package``, ``load_package``, ``copy_package``; re-exported here);
* ``mlflow_files``: the files that make a package an MLflow pyfunc model;
* ``onnx``: ``visionsweep export --format onnx``;
* ``references``: MLflow model-registry references (``models:/name/3``, ``azureml:name:3``) as a package.
"""

from trainers.package.folder import (FILES, FORMAT_VERSION, SEGMENTATION_SETTINGS, LoadedPackage, copy_package,
                                     inference_settings, load_package, package_root, save_package, write_service_layout)

__all__ = ["FILES", "FORMAT_VERSION", "SEGMENTATION_SETTINGS", "LoadedPackage", "copy_package",
           "inference_settings", "load_package", "package_root", "save_package", "write_service_layout"]

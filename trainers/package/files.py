"""Which files make a model package, and copying them: ``best/`` and the service's layout of it after a sweep.

Plain file work, kept apart from ``trainers.package.folder`` (which builds and loads models, so imports torch,
torchvision and every task): a sweep's driver copies the best checkpoint to ``best/``, writes its service layout
and draws the report from files (``scheduler.finish``, ``scheduler.predictions``) without importing any of them,
which on a short job costs seconds of its wall time.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from trainers.package.mlflow_files import FILES as MLFLOW_FILES
from trainers.package.mlflow_files import write_mlflow_files
from trainers.validation_outputs import FILE as VALIDATION_OUTPUTS

FILES = ("model.safetensors", "model.json", "labels.json", "settings.json", "training_config.json", "metrics.json",
         "hf_config.json", *MLFLOW_FILES)
SERVICE_DATA = "artifacts"  # the package's files inside the service's mlflow-model/ folder


def package_root(folder: Path) -> Path:
    """The folder holding a package's files: the folder itself, or its ``artifacts/`` (the service's layout)."""
    if not (folder / "model.json").is_file() and (folder / SERVICE_DATA / "model.json").is_file():
        return folder / SERVICE_DATA
    return folder


def write_service_layout(package: str | Path, dst: str | Path, model_name: str) -> Path:
    """``dst`` as the managed service's ``mlflow-model/`` folder of ``package``: MLflow files at the root, the
    package's files under ``artifacts/``: copies, but the weights a hard link where the file system allows (the
    JSON files are there to be edited; an edit must not reach the package they came from)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    data = dst / SERVICE_DATA
    data.mkdir(parents=True)
    for name in FILES:
        src = Path(package) / name
        if not src.is_file() or name in MLFLOW_FILES:
            continue
        try:
            if name != "model.safetensors":
                raise OSError("copied")
            os.link(src, data / name)
        except OSError:
            shutil.copyfile(src, data / name)
    write_mlflow_files(dst, model_name, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), data=SERVICE_DATA)
    return dst


def copy_package(src: str | Path, dst: str | Path) -> Path:
    """Copy a package folder (only its known files) to ``dst``, with the validation outputs of the evaluation it was
    saved at (``trainers.validation_outputs``: what the run report draws from ``best/``; not a serving file, so not
    in ``FILES``)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (*FILES, VALIDATION_OUTPUTS):
        s = Path(src) / name
        if s.is_file():
            shutil.copyfile(s, dst / name)
    return dst

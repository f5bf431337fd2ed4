"""The model package: one folder that fully describes how to load and call a trained model.

Layout (everything ``predict``, serving, export and incremental training need; no pickle)::
    model.safetensors     weights
    model.json            format version, task, model_name, number of classes, input crop size, architecture
                          choices that follow from the initial weights (a detector's frozen BatchNorm)
    labels.json           class names, in output order
    settings.json         inference settings of §9.5 (v2 names; edit before serving to change them)
    training_config.json  the trial's resolved hyperparameters, and ``initial_weights``: where its weights
                          came from (source, file, sha256, origin, licence)
    metrics.json          validation metrics of the saved epoch
    validation_outputs.npz  (checkpoints and best/ only) that epoch's per-image validation outputs, for the report

The managed service's layout (§9.1, §12 #17) is accepted too: an ``mlflow-model/`` folder with the MLflow files
at its root and the package's files under ``artifacts/`` (its inference settings in ``artifacts/settings.json``,
where scripts written for the service edit them). Every run writes its best model that way as well
(``RUN/outputs/mlflow-model/``, :func:`write_service_layout`), and every command that takes a package takes it.

A package path may be a local folder, any fsspec URI (copied to a temporary folder first), or a
model-registry reference (``models:/fashion/3``, ``azureml:fashion:3``; see ``trainers.package.references``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from trainers import hyperparameters as hp
from trainers.data.urls import is_remote
from trainers.errors import VisionsweepError
from trainers.package.files import FILES, SERVICE_DATA, copy_package, package_root, write_service_layout  # noqa: F401
from trainers.package.mlflow_files import write_mlflow_files
from trainers.package.references import fetch_registered, is_registry_reference
from trainers.tasks import TASKS, known_task
from trainers.tasks.detection import SEGMENTATION_SETTINGS  # noqa: F401 - re-exported by trainers.package

FORMAT_VERSION = 1


def inference_settings(task: str, h: dict[str, Any]) -> dict[str, Any]:
    """The §9.5 settings of a task, taken from the training hyperparameters (the task's own choice)."""
    return TASKS.get(task).inference_settings(h)


def save_package(path: str | Path, *, model: nn.Module, task: str, classes: list[str],
                 hyperparameters: dict[str, Any], metrics: dict[str, Any], architecture: dict[str, Any] | None = None,
                 initial_weights: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    meta = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "model_name": hyperparameters["model_name"],
        "num_classes": len(classes),
        "input_size": hyperparameters.get("training_crop_size"),
    }
    if architecture:
        meta["architecture"] = dict(architecture)
    _write(path / "model.json", meta)
    inner = getattr(model, "module", model)
    if hasattr(inner, "config_dict"):  # a transformers classifier: its architecture, so it loads offline
        _write(path / "hf_config.json", inner.config_dict())
    _write(path / "labels.json", list(classes))
    _write(path / "settings.json", inference_settings(task, hyperparameters))
    config = dict(hyperparameters)
    if initial_weights is not None:
        config["initial_weights"] = initial_weights
    _write(path / "training_config.json", config)
    _write(path / "metrics.json", metrics)
    # the folder is also an MLflow model (pyfunc): `mlflow models predict/serve -m PACKAGE`
    write_mlflow_files(path, hyperparameters["model_name"], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    return path


def _write(p: Path, obj: Any) -> None:
    p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class LoadedPackage:
    model: nn.Module
    task: str
    model_name: str
    classes: list[str]
    settings: dict[str, Any]
    meta: dict[str, Any]
    training_config: dict[str, Any]  # the trial's hyperparameters ({} for a package without them)


def remote_package_root(uri: str, storage_options=None) -> str | None:
    """The URL holding a package's files on storage: ``uri`` itself, its ``artifacts/`` (the service's layout), or
    the same under ``best/`` (``uri`` a run folder); ``None`` when none holds a ``model.json``."""
    from trainers.data import storage

    fs, _ = storage.filesystem(uri, storage_options)
    root = uri.rstrip("/")
    for cand in (root, f"{root}/{SERVICE_DATA}", f"{root}/best", f"{root}/best/{SERVICE_DATA}"):
        _, path = storage.filesystem(f"{cand}/model.json", storage_options)
        if fs.exists(path):
            return cand
    return None


def _local_copy(uri: str, tmp: Path, storage_options=None) -> Path:
    from trainers.data import storage
    from trainers.errors import ImageNotFound

    root = remote_package_root(uri, storage_options)
    if root is None:
        raise VisionsweepError(f"{uri}: not a model package (no model.json there, under {SERVICE_DATA}/ or under "
                               "best/)")
    for name in FILES:
        try:
            (tmp / name).write_bytes(storage.read_bytes(f"{root}/{name}", storage_options))
        except ImageNotFound:  # an optional file (metrics.json, training_config.json ...)
            pass
    return tmp


def fetch_package(uri: str, storage_options=None) -> Path:
    """A node-local copy of the package at ``uri`` (a storage URL), fetched once per node and reused: the trials
    of a job that starts from an earlier model on storage (``checkpoint_run_id``) read it from this node's
    cache folder, not once each from storage. The copy appears whole or not at all (a rename)."""
    import hashlib

    from trainers.data.images import default_cache_dir

    dest = Path(default_cache_dir()) / "packages" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (dest / "model.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        _local_copy(uri, tmp, storage_options)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process of this node got there first: its copy is the same package
            if not (dest / "model.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_package(path: str | Path, device: str = "cpu", settings_override: dict[str, Any] | None = None,
                 registry_uri: str | None = None) -> LoadedPackage:
    """Load a model package for inference; errors name the package and the missing/invalid file."""

    p = str(path)
    if not is_registry_reference(p) and not is_remote(p):
        return _load_local(p, package_root(Path(p.removeprefix("file://"))), device, settings_override)
    # a fetched copy is only read once: the model lives in memory afterwards, so the copy goes (every replica
    # start or reload would otherwise leave a package's worth of disk behind in the temp folder)
    with tempfile.TemporaryDirectory(prefix="visionsweep-pkg-") as tmp:
        fetched = fetch_registered(p, tmp, registry_uri) if is_registry_reference(p) else _local_copy(p, Path(tmp))
        return _load_local(p, package_root(fetched), device, settings_override)


def _load_local(p: str, local: Path, device: str, settings_override: dict[str, Any] | None) -> LoadedPackage:
    from safetensors.torch import load_file


    if not local.is_dir():
        raise VisionsweepError(f"{p}: not a model package folder")
    for name in ("model.safetensors", "model.json", "labels.json"):
        if not (local / name).is_file():
            raise VisionsweepError(f"{p}: not a model package ({name} is missing)")
    try:
        meta = json.loads((local / "model.json").read_text())
        classes = json.loads((local / "labels.json").read_text())
        raw = json.loads((local / "settings.json").read_text()) if (local / "settings.json").is_file() else {}
        trained = json.loads((local / "training_config.json").read_text()) \
            if (local / "training_config.json").is_file() else {}
    except json.JSONDecodeError as e:
        raise VisionsweepError(f"{p}: invalid JSON in the package ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise VisionsweepError(f"{p}: package format_version {meta.get('format_version')!r} is not "
                               f"{FORMAT_VERSION}; re-export it with this version")
    task = meta["task"]
    kind = known_task(task, f"{p}: {task} packages of model {meta['model_name']} cannot be loaded by this version")
    # Every §9.5 setting has a value: the package's, overridden per call site, else the model's default from
    # the one hyperparameter table (a package written by another tool may leave some out).
    defaults = kind.inference_settings(hp.task_model_defaults(task, meta["model_name"]))
    settings = {**defaults, **{hp.canonical_name(k): v for k, v in {**raw, **(settings_override or {})}.items()}}
    model = kind(classes).package_model(meta, settings, local, p)
    try:
        model.load_state_dict(load_file(str(local / "model.safetensors")))
    except RuntimeError as e:
        raise VisionsweepError(f"{p}: model.safetensors does not match model {meta['model_name']} with "
                               f"{meta['num_classes']} classes ({str(e).splitlines()[0]})") from None
    model.eval().to(device)
    return LoadedPackage(model, task, meta["model_name"], classes, settings, meta, trained)

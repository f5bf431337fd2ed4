"""Stage 1, check: the run folder's job files, ``checkpoint_run_id`` and the weights of the models a manual sweep
names, before any data is read or any cluster started (AutoMode's models are known once the plan stage has picked
them: it checks their weights)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scheduler.preflight import check_weights, weights_config
from scheduler.spec import Job, redact
from scheduler.stages.context import RunContext
from trainers.data import storage
from trainers.data.urls import is_remote
from trainers.errors import VisionsweepError
from trainers.models.weights.sources import WeightsConfig


@dataclass
class Checked:
    init_package: str | None  # checkpoint_run_id's model package: it wins over the published weights
    weights: WeightsConfig
    weights_plan: dict[str, Any] | None  # weights.json; None for AutoMode, whose picks the plan stage checks


def check(ctx: RunContext, datastores: str | None, data_assets: str | None) -> Checked:
    job, store, run_dir = ctx.job, ctx.store, ctx.run_dir
    if store.remote is None and in_job_package(run_dir):
        ctx.echo(f"warning: the run folder {run_dir} is inside this Ray job's working directory as Ray unpacked it "
                 "(runtime_resources/working_dir_files/...): Ray deletes that copy with the cluster's session, or "
                 "sooner to make room for other jobs' packages. Give --output an absolute path on a disk that stays, "
                 "or a storage URL (az://..., s3://...)")
    if not ctx.resume:
        (run_dir / "job.yml").write_text(job.redacted_text())
        (run_dir / "run.json").write_text(json.dumps({
            "source": str(job.source.resolve()) if job.source else None, "base_dir": str(job.base_dir),
            "datastores": str(Path(datastores).resolve()) if datastores else None,
            "data_assets": str(Path(data_assets).resolve()) if data_assets else None,
            **_labels(job),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    package = init_package(job)
    (run_dir / "job.resolved.yaml").write_text(yaml.safe_dump(job.resolved(), sort_keys=False))
    wcfg, wplan = weights_config(job), None
    if package:  # incremental training: the earlier model wins over the published weights
        wplan = {"pretrained": wcfg.pretrained, "checkpoint_run_id": package, "models": {}}
    elif job.mode != "automode":
        wcfg, wplan = check_weights(job, wcfg)
    store.push()
    return Checked(package, wcfg, wplan)


def resolve_checkpoint_run(ref: str, base_dir: Path, storage_options=None) -> str:
    """``checkpoint_run_id``: a model package (either layout), a run folder (its best/), or a run folder name under
    runs/; any of them may be a storage URL (``az://``, ``s3://`` ...), which stays a URL: each node fetches it
    once (``trainers.package.fetch_package``)."""
    from trainers.package.folder import package_root, remote_package_root  # torchvision: only with this key

    if is_remote(ref):
        root = remote_package_root(ref, storage_options)
        if root is None:
            raise VisionsweepError(f"training_parameters.checkpoint_run_id: {ref!r} is neither a model package nor "
                                   f"a run folder with best/ (no model.json there, under artifacts/ or best/)")
        return root
    candidates = [Path(ref), base_dir / ref, Path("runs") / ref]
    for c in candidates:
        for pkg in (c, c / "best"):
            if (package_root(pkg) / "model.json").is_file():
                return str(package_root(pkg).resolve())
    raise VisionsweepError(f"training_parameters.checkpoint_run_id: {ref!r} is neither a model package nor a run "
                           f"folder with best/ (looked in {', '.join(str(c) for c in candidates)})")


def init_package(job: Job) -> str | None:
    """``checkpoint_run_id``: the model package the trials start from (incremental training), checked against the
    job's task and model."""
    ref = job.training_parameters.get("checkpoint_run_id")
    if not ref:
        return None
    options = dict(job.spec.visionsweep.storage_options)
    pkg = resolve_checkpoint_run(ref, job.base_dir, options)
    meta = json.loads(storage.read_bytes(f"{pkg}/model.json", options) if is_remote(pkg)
                      else (Path(pkg) / "model.json").read_text())
    if meta["task"] != job.task:
        raise VisionsweepError(f"training_parameters.checkpoint_run_id: {pkg} was trained for {meta['task']}, "
                               f"not {job.task}")
    fixed = job.training_parameters.get("model_name")
    if fixed and fixed != meta["model_name"]:
        raise VisionsweepError(f"training_parameters.checkpoint_run_id: {pkg} is a {meta['model_name']}, "
                               f"but model_name is {fixed}")
    job.training_parameters.setdefault("model_name", meta["model_name"])
    return pkg


def in_job_package(path: Path) -> bool:
    """Whether ``path`` lies in the working directory of a Ray job as Ray unpacked it on this node (``ray job
    submit --working-dir``, where a relative ``--output`` lands): Ray's temporary copy, not the user's folder."""
    parts = Path(path).resolve().parts
    return any(a == "runtime_resources" and b == "working_dir_files" for a, b in zip(parts, parts[1:]))


def _labels(job: Job) -> dict[str, Any]:
    """The job's display name, description and tags for run.json (credentials inside them as ``***``)."""
    spec = job.spec
    return {"display_name": redact(spec.display_name) if spec.display_name else None,
            "description": redact(spec.description) if spec.description else None,
            "tags": {str(k): redact(str(v)) for k, v in (spec.tags or {}).items()}}

"""The sweep controller: a validated job -> a Ray Tune run -> a run folder with the best model package.

Run folder::

    job.yml                 the job exactly as submitted
    job.resolved.yaml       the job as it runs (defaults, clamped limits, v2 names, mode)
    data/                   summary.json (classes, counts, warnings) and the train/valid split as JSONL
    trials/<id>/            params.json, metrics.jsonl (one line per evaluation), status.json
    ray/                    Ray Tune's experiment storage (trial checkpoints)
    leaderboard.csv         one row per trial, best first
    best/                   the model package of the best trial (trainers.package)
    summary.json            mode, timings, best trial, where everything is
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from scheduler.leaderboard import leaderboard_rows, write_leaderboard
from scheduler.runfolder import RunFolderCallback
from scheduler.spec import Job
from trainers import hyperparameters as hp
from trainers.data import PreparedData, prepare_data, resolve_url
from trainers.errors import NotSupportedYet, VisionsweepError

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    best_trial: str | None
    best_metric: float | None
    elapsed_s: float
    timed_out: bool


def check_supported(job: Job) -> None:
    """Refuse, by key, what this version parses but does not run yet."""
    spec = job.spec
    if spec.task not in hp.CLASSIFICATION_TASKS:
        raise NotSupportedYet(f"task: {spec.task}", "this version trains image_classification and "
                              "image_classification_multilabel")
    if job.mode == "automode":
        raise NotSupportedYet("AutoMode (limits.max_trials > 1 without search_space)",
                              "give a search_space and sweep.sampling_algorithm")
    if spec.sweep is not None and spec.sweep.sampling_algorithm == "bayesian":
        raise NotSupportedYet("sweep.sampling_algorithm: bayesian", "use random or grid")
    if spec.sweep is not None and spec.sweep.early_termination is not None:
        raise NotSupportedYet("sweep.early_termination")
    if spec.properties.node_count_per_trial > 1:
        raise NotSupportedYet("properties.node_count_per_trial > 1")
    if job.training_parameters.get("checkpoint_run_id"):
        raise NotSupportedYet("training_parameters.checkpoint_run_id")
    if job.training_parameters.get("distributed"):
        raise NotSupportedYet("training_parameters.distributed")
    names = [job.training_parameters.get("model_name")]
    for sub in job.search_space or []:
        if "model_name" in sub:
            names += list(sub["model_name"].values)
    for n in names:
        if n and hp.model_backend(n) != "builtin":
            raise NotSupportedYet(f"model_name: {n}", f"{hp.model_backend(n)} models")


def default_run_dir(job: Job) -> Path:
    name = job.spec.name or job.spec.experiment_name or (job.source.stem if job.source else "job")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prepare(job: Job, run_dir: Path) -> PreparedData:
    spec, ext = job.spec, job.spec.visionsweep
    from trainers.data import load_datastores

    datastores = load_datastores(ext.datastores)
    base = str(job.base_dir)
    train_path = resolve_url(spec.training_data.path, base, datastores, "training_data.path")
    valid_path = (resolve_url(spec.validation_data.path, base, datastores, "validation_data.path")
                  if spec.validation_data else None)
    data = prepare_data(spec.task, spec.target_column_name, train_path, valid_path, job.validation_fraction,
                        ext.seed, datastores, ext.storage_options, ext.bad_images)
    d = run_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", data.train), ("valid", data.valid)):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps({"image_url": r.image_url, "label": _label_json(r.label), "source": r.source}) + "\n")
    summary = {"classes": data.classes, "train_images": len(data.train), "validation_images": len(data.valid),
               "warnings": data.warnings}
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return data


def _label_json(label: Any) -> Any:
    return list(label) if isinstance(label, tuple) else label


def run_job(job: Job, output: str | Path | None = None, echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a validated job on the connected Ray cluster and write its run folder."""
    from ray import tune

    from cluster.connect import cluster_gpus, connect
    from scheduler.searchers import SpaceSearcher
    from trainers.trainable import train_trial

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    check_supported(job)
    t0 = time.time()
    run_dir = Path(output) if output else default_run_dir(job)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yml").write_text(job.text)
    (run_dir / "job.resolved.yaml").write_text(yaml.safe_dump(job.resolved(), sort_keys=False))

    data = _prepare(job, run_dir)
    echo(f"data: {len(data.train)} training / {len(data.valid)} validation images, {len(data.classes)} classes")
    for w in data.warnings:
        echo(f"warning: {w}")

    echo(f"ray: {connect()}")
    spec, ext = job.spec, job.spec.visionsweep
    primary = job.primary_metric
    algorithm = spec.sweep.sampling_algorithm if spec.sweep else "random"
    searcher = SpaceSearcher(job.search_space, algorithm, spec.limits.max_trials, ext.seed, primary, "max")
    gpus = ext.gpus_per_trial if ext.gpus_per_trial is not None else (1.0 if cluster_gpus() > 0 else 0.0)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, fixed=job.training_parameters,
                             weights=ext.pretrained_weights, download_weights=ext.download_weights,
                             cpus=ext.cpus_per_trial),
        {"cpu": ext.cpus_per_trial, "gpu": gpus},
    )
    callback = RunFolderCallback(run_dir, primary, searcher.total_trials, echo)
    budget_s = spec.limits.timeout_minutes * 60
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=primary, mode="max", search_alg=searcher, num_samples=searcher.total_trials,
            max_concurrent_trials=spec.limits.max_concurrent_trials, time_budget_s=budget_s,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(run_dir / "ray"), verbose=0, callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=primary,
                                                    checkpoint_score_order="max"),
        ),
    )
    echo(f"sweep: {job.mode} mode, {searcher.total_trials} trial(s), {spec.limits.max_concurrent_trials} at a time, "
         f"primary metric {primary}, {ext.cpus_per_trial:g} CPU + {gpus:g} GPU per trial")
    try:
        results = tuner.fit()
    finally:
        elapsed = time.time() - t0
        timed_out = elapsed >= budget_s
        callback.mark_unfinished("stopped (timeout)" if timed_out else "stopped")
    default_model = job.training_parameters.get("model_name") or hp.DEFAULT_MODEL[spec.task]
    rows = leaderboard_rows(callback.trials, primary, default_model)
    write_leaderboard(run_dir / "leaderboard.csv", rows)
    best_trial, best_metric = _export_best(results, rows, primary, run_dir)
    summary = {
        "mode": job.mode, "task": spec.task, "primary_metric": primary, "trials": len(rows),
        "best_trial": best_trial, "best_metric": best_metric, "elapsed_s": round(time.time() - t0, 1),
        "timed_out": timed_out, "best_package": str(run_dir / "best") if best_trial else None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, rows, best_trial, best_metric, time.time() - t0, timed_out)


def _export_best(results, rows: list[dict[str, Any]], primary: str, run_dir: Path) -> tuple[str | None, float | None]:
    """Copy the best trial's best checkpoint (a model package) to ``run_dir/best``."""
    best_dir = run_dir / "best"
    for row in rows:  # best first; take the first trial that has a checkpoint
        if row.get(primary) is None:
            continue
        for result in results:
            if result.metrics and result.metrics.get("trial_id") == row["trial_id"] or \
                    (result.path and Path(result.path).name == row["trial_id"]):
                ckpts = [(m.get(primary, float("-inf")), c) for c, m in (result.best_checkpoints or [])]
                if not ckpts:
                    break
                _, ckpt = max(ckpts, key=lambda x: x[0])
                if best_dir.exists():
                    shutil.rmtree(best_dir)
                ckpt.to_directory(str(best_dir))
                return row["trial_id"], row[primary]
    if not any(r.get(primary) is not None for r in rows):
        raise VisionsweepError(f"no trial reported {primary}; see trials/*/status.json and {run_dir / 'ray'}")
    return None, None

"""The sweep controller: a validated job -> a Ray Tune run -> a run folder with the best model package.

Run folder::
    job.yml                 the job as submitted, credentials in storage_options as *** (run.json: its source)
    job.resolved.yaml       the job as it runs (defaults, clamped limits, v2 names, mode)
    data/                   summary.json (classes, counts, warnings) and the train/valid split as JSONL
    trials/<id>/            params.json, metrics.jsonl (one line per evaluation), status.json
    ray/                    Ray Tune's experiment storage (trial checkpoints, searcher state)
    weights.json            where each model's initial weights were found before the trials (or that every model
                            starts from random initialisation: visionsweep.pretrained: false)
    automode.json           AutoMode only: the models and ranges it chose, and why
    leaderboard.csv         one row per trial, best first
    best/                   the model package of the best trial
    report.html             the sweep report (``visionsweep report RUN`` rewrites it)
    mlflow.db, tracking.json  MLflow tracking (parent run = sweep, child runs = trials)
    summary.json            mode, timings, best trial, where everything is

The controller is resumable: ``resume_run`` restores the Tune experiment from ``ray/``; every
record it writes itself is rebuilt from the per-trial files, never kept only in memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from scheduler.joblog import apply_job_logging
from scheduler.leaderboard import leaderboard_rows, write_leaderboard
from scheduler.policies import create_scheduler
from scheduler.policies.configs import AshaSettings
from scheduler.runfolder import RunFolderCallback, mark_unfinished, read_json, read_trials
from scheduler.runstore import RunStore, mirror_callback
from scheduler.searchers import SpaceSearcher
from scheduler.space import Choice
from scheduler.spec import Job, parse_job
from scheduler.warmstart import load_prior_trials
from trainers import hyperparameters as hp
from trainers.data import ImageStore, PreparedData, load_datastores, prepare_data, resolve_url
from trainers.data.credentials import EnvCredentials
from trainers.data.images import default_cache_dir
from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.labels import label_json
from trainers.launch import Group
from trainers.models.weights.manifest import entries_for
from trainers.models.weights.resolve import check as check_models, needs_folder
from trainers.models.weights.sources import STORE_ENV, WeightsConfig
from trainers.package import copy_package

log = logging.getLogger(__name__)
SWEEP = "sweep"  # Tune experiment name under RUN/ray
TRAIN = "train"  # Ray Train runs of data-parallel trials under RUN/ray, one per trial id
STATE_SYNC_S = 2  # seconds between uploads of Tune's experiment state (TUNE_GLOBAL_CHECKPOINT_S is 2 too)
DRIVER_CPUS = 0.1  # what the driver of a data-parallel trial reserves: it only waits on its workers
clock = time.time  # the job's clock for limits.timeout_minutes (a test moves it past data preparation)


@dataclass
class RunResult:
    run_dir: Path  # on this machine (the staging copy of a run folder on storage)
    rows: list[dict[str, Any]]
    best_trial: str | None
    best_metric: float | None
    elapsed_s: float
    timed_out: bool
    notes: list[str] = field(default_factory=list)
    location: str = ""  # the run folder as the user named it: a local path or a storage URL


@dataclass
class Plan:
    """What will be searched and how: Tune searcher, scheduler, number of trials, notes for the user."""

    searcher: Any
    scheduler: Any
    total_trials: int
    algorithm: str
    notes: list[str] = field(default_factory=list)
    automode: dict[str, Any] | None = None


def check_supported(job: Job) -> None:
    """Before any trial: every model the job can pick is buildable here (its optional extra installed,
    an MMDetection config name known), or the job stops with what to install or change."""

    apply_job_logging(job)  # log_verbosity (own loggers only) and credential redaction on run, resume and demo
    names = [job.training_parameters.get("model_name")]
    for sub in job.search_space or []:
        if "model_name" in sub:
            names += list(sub["model_name"].values)
    default = job.mode != "automode" and not any(names)
    if default:
        names = [hp.DEFAULT_MODEL[job.task]]
    for n in names:
        if not n:
            continue
        if hp.model_backend(n) == "huggingface":
            from trainers.models.huggingface import require_transformers

            require_transformers()  # the error carries the install command
        elif hp.model_backend(n) == "mmdetection":
            from trainers.models.openmmlab import config_path

            config_path(n)  # the extra is installed and the zoo has that config
        elif n == "yolov5":
            from trainers.models.openmmlab import require

            try:
                require(yolo=True)
            except VisionsweepError as e:
                why = ", the default model of image_object_detection," if default else ""
                others = ", ".join(m for m in hp.DETECTION_MODELS if m != "yolov5")
                raise VisionsweepError(f"model_name: yolov5{why} cannot run here: {e} (or set model_name to "
                                       f"one of {others})") from None


def weights_config(job: Job) -> WeightsConfig:
    """Where the job's initial weights come from (``trainers.models.weights.sources``), handed to every trial."""
    from trainers.data.urls import join

    ext = job.spec.visionsweep
    store = ext.weights_store or os.environ.get(STORE_ENV) or None
    if store:  # a relative folder is the job file's, as data paths are
        store = join(str(job.base_dir), store)
    explicit = {k: v if is_url(v) else join(str(job.base_dir), v) for k, v in ext.pretrained_weights.items()}
    return WeightsConfig.create(pretrained=ext.pretrained, explicit=explicit, store=store,
                                storage_options=ext.storage_options, download=ext.download_weights,
                                cache_dir=ext.cache.dir)


def check_weights(job: Job, cfg: WeightsConfig, names: list[str] | None = None) -> tuple[WeightsConfig, dict[str, Any]]:
    """Before any trial: every model the job can train has its weights somewhere (else one ``WeightsError``
    naming each model, its file, every place looked and the pull command). Returns the config with the cache
    paths the driver saw (a trial on this machine uses them) and the plan written to ``weights.json``."""
    names = job.model_names() if names is None else names
    found = check_models(job.task, [(n, job.model_sizes() if n == "yolov5" else None) for n in names], cfg)
    seen = {e.file: where.where for e, where in found if where.source == "cache"}
    plan = {"pretrained": cfg.pretrained,
            "models": {e.label: {"source": where.source, "where": _public(where.where), "detail": where.detail,
                                 "file": e.file, "weights": e.weights, "hash": e.hash_text, "licence": e.licence}
                       for e, where in found}}
    return cfg.with_seen(seen), plan


def _public(where: str) -> str:
    from scheduler.spec import redact

    return redact(where)


def _weights_lines(plan: dict[str, Any]) -> list[str]:
    if not plan["pretrained"]:
        return ["weights: none: every model starts from random initialisation (visionsweep.pretrained: false)"]
    return [f"weights: {name} from {m['detail'] or m['source']} ({m['where']}; {m['weights']})"
            for name, m in plan["models"].items()]


def default_run_dir(job: Job) -> Path:
    name = job.spec.name or job.spec.experiment_name or (job.source.stem if job.source else "job")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- data ---------------------------------------------------------------------------------------

def image_store(job: Job) -> ImageStore:
    """How trials read images: storage options, the node cache (§11.2) and whether images stream."""
    ext = job.spec.visionsweep
    cache_dir = ext.cache.dir or default_cache_dir()
    if ext.cache.max_size_gb is not None:
        max_bytes = int(ext.cache.max_size_gb * 2**30)
    else:
        probe = Path(cache_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        max_bytes = min(100 * 2**30, int(shutil.disk_usage(probe).free * 0.8))
    return ImageStore(dict(ext.storage_options), cache_dir, max_bytes, job.advanced.stream_image_files)


def _prepare(job: Job, run_dir: Path, datastores_file: str | None = None) -> PreparedData:
    spec, ext = job.spec, job.spec.visionsweep
    datastores = load_datastores(ext.datastores, datastores_file)
    base = str(job.base_dir)
    train_path = resolve_url(spec.training_data.path, base, datastores, "training_data.path")
    valid_path = (resolve_url(spec.validation_data.path, base, datastores, "validation_data.path")
                  if spec.validation_data else None)
    data = prepare_data(spec.task, spec.target_column_name, train_path, valid_path, job.validation_fraction,
                        ext.seed, datastores, bad_images=ext.bad_images, store=image_store(job))
    d = run_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", data.train), ("valid", data.valid)):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in recs:
                label = label_json(r.label)
                f.write(json.dumps({"image_url": r.image_url, "label": label, "source": r.source}) + "\n")
    summary = {"classes": data.classes, "train_images": len(data.train), "validation_images": len(data.valid),
               "warnings": data.warnings}
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return data


# --- incremental training ------------------------------------------------------------------------

def resolve_checkpoint_run(ref: str, base_dir: Path) -> Path:
    """``checkpoint_run_id``: a model package, a run folder (its best/), or a run folder name under runs/."""
    candidates = [Path(ref), base_dir / ref, Path("runs") / ref]
    for c in candidates:
        for pkg in (c, c / "best"):
            if (pkg / "model.json").is_file():
                return pkg.resolve()
    raise VisionsweepError(f"training_parameters.checkpoint_run_id: {ref!r} is neither a model package nor a run "
                           f"folder with best/ (looked in {', '.join(str(c) for c in candidates)})")


def _init_package(job: Job) -> str | None:
    ref = job.training_parameters.get("checkpoint_run_id")
    if not ref:
        return None
    pkg = resolve_checkpoint_run(ref, job.base_dir)
    meta = json.loads((pkg / "model.json").read_text())
    if meta["task"] != job.task:
        raise VisionsweepError(f"training_parameters.checkpoint_run_id: {pkg} was trained for {meta['task']}, "
                               f"not {job.task}")
    fixed = job.training_parameters.get("model_name")
    if fixed and fixed != meta["model_name"]:
        raise VisionsweepError(f"training_parameters.checkpoint_run_id: {pkg} is a {meta['model_name']}, "
                               f"but model_name is {fixed}")
    job.training_parameters.setdefault("model_name", meta["model_name"])
    return str(pkg)


# --- the plan: searcher + scheduler ----------------------------------------------------------

def trial_fixed(job: Job) -> dict[str, Any]:
    """What every trial's sampled config is resolved against (the trainable's ``fixed``)."""
    return {**job.training_parameters, "advanced_settings": job.advanced.model_dump()}


def trial_epochs(task: str, fixed: dict[str, Any], config: dict[str, Any]) -> int:
    return int(hp.resolve_hyperparameters(task, fixed, config)["number_of_epochs"])


def max_epochs(job: Job) -> int:
    """The most epochs any trial can run: the ASHA budget."""
    fixed = job.training_parameters
    if "number_of_epochs" in fixed:
        return fixed["number_of_epochs"]
    found = []
    for sub in job.search_space or []:
        d = sub.get("number_of_epochs")
        if isinstance(d, Choice):
            found += [int(v) for v in d.values]
    models = [m for sub in job.search_space or [] if "model_name" in sub for m in sub["model_name"].values]
    models = models or [fixed.get("model_name") or hp.DEFAULT_MODEL[job.task]]
    found += [hp.task_model_defaults(job.task, m)["number_of_epochs"] for m in models]
    return max(found)


def weights_available(job: Job, cfg: WeightsConfig) -> Callable[[str], str | None]:
    """For AutoMode: None when a model's weights can be had (or are not needed), else why not."""
    from trainers.models.weights.sources import locate

    def why_not(name: str) -> str | None:
        if not cfg.pretrained and not needs_folder(name):
            return None
        try:
            wanted = entries_for(name, job.task, job.model_sizes() if name == "yolov5" else None)
        except VisionsweepError as e:
            return str(e)
        for e in wanted:
            found, looked = locate(e, cfg)
            if found is None:
                return f"{e.file} is in none of: " + "; ".join(looked)
        return None
    return why_not


def build_plan(job: Job, has_gpu: bool, run_dir: Path, available: Callable[[str], str | None] | None = None) -> Plan:
    from scheduler import automode
    from scheduler.policies.ray_adapter import PolicyScheduler

    epochs_of = functools.partial(trial_epochs, job.task, trial_fixed(job))  # a stop at the last epoch is a finish

    spec, seed, primary = job.spec, job.spec.visionsweep.seed, job.primary_metric
    limits = spec.limits
    priors = load_prior_trials(spec.visionsweep.resume_from, primary)
    notes = [f"warm start: {len(priors)} trial(s) from {len(spec.visionsweep.resume_from)} earlier run(s)"] \
        if spec.visionsweep.resume_from else []
    if job.mode == "automode":
        p = automode.plan(job.task, limits.max_trials, job.training_parameters, has_gpu, available,
                          spec.visionsweep.pretrained)
        searcher = SpaceSearcher(p["space"], "random", limits.max_trials, seed, primary, "max",
                                 first=[p["first_trial"]["config"]])
        scheduler = create_scheduler(AshaSettings(type="asha", **p["asha"]), primary, p["asha"]["max_epochs"],
                                     str(run_dir), epochs_of)
        notes.append("AutoMode: " + ", ".join(m["model_name"] for m in p["models"]) +
                     f" under ASHA (grace {p['asha']['grace_period']} epoch(s), factor "
                     f"{p['asha']['reduction_factor']:g}); see automode.json")
        return Plan(searcher, scheduler, searcher.total_trials, "random", notes, automode.explain(p))
    algorithm = spec.sweep.sampling_algorithm if spec.sweep else "random"
    if algorithm == "bayesian":
        from scheduler.bayesian import budget_warning, make_searcher

        warning = budget_warning(job.search_space, limits.max_trials)
        notes += [f"warning: {warning}"] if warning else []
        searcher = make_searcher(job.search_space, primary, seed, limits.max_trials, priors)
        return Plan(searcher, None, limits.max_trials, algorithm, notes)
    searcher = SpaceSearcher(job.search_space, algorithm, limits.max_trials, seed, primary, "max")
    policy = spec.sweep.early_termination if spec.sweep else None
    scheduler = create_scheduler(policy, primary, max_epochs(job), str(run_dir), epochs_of)
    if priors and isinstance(scheduler, PolicyScheduler):
        for p in priors:
            scheduler.policy.add_history(f"prior:{Path(p.run).name}/{p.trial_id}", p.values)
    elif priors:
        notes.append("warm start: histories are used by bandit, median_stopping and truncation_selection only")
    return Plan(searcher, scheduler, searcher.total_trials, algorithm, notes)


# --- running --------------------------------------------------------------------------------------

def plan_group(job: Job, gpus_per_node: float, store: RunStore) -> Group:
    """Workers per trial (§3.6, §3.8, §11.1): nodes x workers per node; one worker runs in-process.

    ``distributed`` unset or true: a trial takes every GPU of its node; false: one GPU. On a CPU-only
    cluster a node gives one worker unless ``visionsweep.workers_per_node`` says otherwise.
    """
    ext, tp = job.spec.visionsweep, job.training_parameters
    nodes = job.spec.properties.node_count_per_trial
    if ext.workers_per_node is not None:
        per_node = ext.workers_per_node
    elif gpus_per_node >= 1 and tp.get("distributed") is not False:
        per_node = int(gpus_per_node)
    else:
        per_node = 1
    return Group(workers=nodes * per_node, use_gpu=gpus_per_node > 0, cpus_per_worker=ext.cpus_per_trial,
                 spread=nodes > 1, max_failures=ext.trial_retries, amp=ext.mixed_precision,
                 channels_last=ext.channels_last, **dict(zip(("storage_path", "storage_filesystem"),
                                                             store.ray_storage(TRAIN))))


def capacity_shortfall(group: Group) -> str | None:
    """Why a data-parallel trial's workers cannot all be placed on the cluster as it is now, or None.

    A warning, not an error: an autoscaling cluster may still add the nodes; otherwise the trial waits.
    """
    import ray

    if group.workers <= 1:
        return None
    res = ray.cluster_resources()
    need_cpu = group.workers * group.cpus_per_worker + DRIVER_CPUS
    if need_cpu > res.get("CPU", 0) + 1e-9:
        return (f"a data-parallel trial needs {group.workers} workers x {group.cpus_per_worker:g} CPU "
                f"(visionsweep.cpus_per_trial) + {DRIVER_CPUS:g} CPU for its driver = {need_cpu:g} CPUs, but the "
                f"cluster has {res.get('CPU', 0):g} now: trials wait until nodes are added (lower cpus_per_trial, "
                "workers_per_node or node_count_per_trial to fit)")
    if group.use_gpu and group.workers > res.get("GPU", 0):
        return (f"a data-parallel trial needs {group.workers} GPUs (one per worker), but the cluster has "
                f"{res.get('GPU', 0):g} now: trials wait until GPU nodes are added")
    return None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _echo_default(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run_job(job: Job, output: str | Path | RunStore | None = None, echo: Callable[[str], None] | None = None,
            resume: bool = False, datastores: str | None = None) -> RunResult:
    """Run a validated job on the connected Ray cluster and write its run folder (a path or a storage URL)."""
    echo = echo or _echo_default
    t0 = clock()  # limits.timeout_minutes covers the whole job: checks, data preparation, Ray start, trials
    check_supported(job)
    store = output if isinstance(output, RunStore) else RunStore.at(output or default_run_dir(job))
    run_dir = store.local
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(job, store, echo, resume, datastores, t0)
    finally:
        store.close()  # the run folder on storage gets every file, even when the sweep failed


def _run(job: Job, store: RunStore, echo: Callable[[str], None], resume: bool, datastores: str | None,
         t0: float) -> RunResult:
    from ray import tune

    from cluster.connect import connect, gpus_per_node
    from scheduler.tracking import MlflowTracker
    from trainers.launch import train_trial

    run_dir = store.local
    phase = Phases()
    if not resume:
        (run_dir / "job.yml").write_text(job.redacted_text())
        (run_dir / "run.json").write_text(json.dumps({
            "source": str(job.source.resolve()) if job.source else None, "base_dir": str(job.base_dir),
            "datastores": str(Path(datastores).resolve()) if datastores else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    init_package = _init_package(job)
    (run_dir / "job.resolved.yaml").write_text(yaml.safe_dump(job.resolved(), sort_keys=False))
    wcfg, wplan = weights_config(job), None
    if init_package:  # incremental training: the earlier model wins over the published weights
        wplan = {"pretrained": wcfg.pretrained, "checkpoint_run_id": init_package, "models": {}}
    elif job.mode != "automode":  # AutoMode checks the models it picks, once it has picked them
        wcfg, wplan = check_weights(job, wcfg)

    store.push()
    with phase("data"):
        data = _prepare(job, run_dir, datastores)
    store.push()
    echo(f"data: {len(data.train)} training / {len(data.valid)} validation images, {len(data.classes)} classes")
    for w in data.warnings:
        echo(f"warning: {w}")
    spec, ext = job.spec, job.spec.visionsweep
    # Data-parallel trials need the dashboard: Ray Train frees a stopped trial's workers through it.
    distributed = spec.properties.node_count_per_trial > 1 or (ext.workers_per_node or 1) > 1 or \
        (job.training_parameters.get("distributed") is not False and _local_gpus() > 1)
    with phase("ray_start"):
        echo(f"ray: {connect(dashboard=distributed)}")
    primary = job.primary_metric
    node_gpus = gpus_per_node()
    has_gpu = node_gpus > 0
    group = plan_group(job, node_gpus, store)
    short = capacity_shortfall(group)
    if short and not os.environ.get("RAY_ADDRESS"):  # an embedded Ray never grows: the trials would wait forever
        raise VisionsweepError(short.split(" now:")[0] + "; " + short.split("(", 1)[-1].rstrip(")"))
    if short:
        echo(f"warning: {short}")
    plan = build_plan(job, has_gpu, run_dir, weights_available(job, wcfg))
    if wplan is None:
        wcfg, wplan = check_weights(job, wcfg, [m["model_name"] for m in plan.automode["models"]])
    (run_dir / "weights.json").write_text(json.dumps(wplan, indent=2) + "\n")
    for line in (_weights_lines(wplan) if not init_package else [f"weights: from checkpoint_run_id {init_package}"]):
        echo(line)
    for n in plan.notes:
        echo(n)
    if plan.automode is not None:
        (run_dir / "automode.json").write_text(json.dumps(plan.automode, indent=2) + "\n")
    if group.workers > 1:  # the trial is only the group's driver; the workers reserve their own CPUs / GPUs
        cpus, gpus = DRIVER_CPUS, 0.0
    else:
        cpus = ext.cpus_per_trial
        gpus = ext.gpus_per_trial if ext.gpus_per_trial is not None else (1.0 if has_gpu else 0.0)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data,
                             fixed=trial_fixed(job),
                             weights=wcfg,
                             cpus=ext.cpus_per_trial, init_package=init_package, group=group, primary=primary,
                             credentials=EnvCredentials.from_environ(), log_level=spec.log_verbosity,
                             failed={t.trial_id: t.error or "failed" for t in read_trials(run_dir).values()
                                     if t.status == "error" and not t.retry}),
        {"cpu": cpus, "gpu": gpus},
    )
    callbacks: list[Any] = [RunFolderCallback(store, primary, plan.total_trials, echo), mirror_callback(store)]
    tracker = None
    if ext.tracking.enabled:
        tracker = MlflowTracker(run_dir, ext.tracking.uri, ext.tracking.experiment or spec.experiment_name or
                                "visionsweep", spec.name or run_dir.name, primary)
        callbacks.append(tracker)
    budget_s = spec.limits.timeout_minutes * 60
    left_s = budget_s - (clock() - t0)  # what data preparation and the cluster's start left to the trials
    if left_s <= 0 and not resume:
        raise VisionsweepError(
            f"limits.timeout_minutes ({spec.limits.timeout_minutes}) ran out before the first trial: data "
            f"preparation and the cluster's start took {clock() - t0:.0f}s; the prepared data is in "
            f"{store.where}/data. Raise limits.timeout_minutes.")
    storage_path, storage_fs = store.ray_storage()
    if resume:
        from ray.tune import Tuner

        if not store.exists(f"ray/{SWEEP}/tuner.pkl"):
            raise VisionsweepError(f"{store.where}: nothing to resume (no Ray Tune experiment in ray/{SWEEP})")
        tuner = Tuner.restore(f"{storage_path}/{SWEEP}", trainable, resume_unfinished=True, resume_errored=True,
                              storage_filesystem=storage_fs)
        echo(f"resume: {sum(r.finished for r in read_trials(run_dir).values())} finished trial(s) kept")
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=primary, mode="max", search_alg=plan.searcher, scheduler=plan.scheduler,
                num_samples=plan.total_trials, max_concurrent_trials=spec.limits.max_concurrent_trials,
                time_budget_s=left_s, trial_dirname_creator=_trial_dirname,
                # A finished trial's process takes the next trial of the same resources: no new Python,
                # no torch import, no start-up of a Ray worker between trials (seconds each on a small node).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=SWEEP, storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
                callbacks=callbacks,
                # On storage, Tune uploads its experiment state at most every sync_period (default 5 min):
                # resume can only go on from the last upload, so keep it as fresh as the local snapshot.
                sync_config=tune.SyncConfig(sync_period=STATE_SYNC_S),
                failure_config=tune.FailureConfig(max_failures=ext.trial_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=primary,
                                                        checkpoint_score_order="max"),
            ),
        )
    per_trial = (f"{group.workers} data-parallel workers x ({ext.cpus_per_trial:g} CPU + {int(has_gpu)} GPU) per trial"
                 if group.workers > 1 else f"{ext.cpus_per_trial:g} CPU + {gpus:g} GPU per trial")
    echo(f"sweep: {job.mode} mode, {plan.algorithm} sampling, {plan.total_trials} trial(s), "
         f"{spec.limits.max_concurrent_trials} at a time, primary metric {primary}, {per_trial}, "
         f"images {'streamed' if data.store.stream else 'downloaded to the node cache first'}")
    try:
        with phase("trials"):
            tuner.fit()
    finally:
        timed_out = clock() - t0 >= budget_s
        mark_unfinished(run_dir, "stopped (timeout)" if timed_out else "stopped")
    return finish_run(job, store, t0, timed_out, tracker, plan.notes, phase)


class Phases(dict):
    """Seconds spent in each phase of the job (summary.json ``timings_s``): where a job's time goes."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - t, 2)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def finish_run(job: Job, store: RunStore, t0: float, timed_out: bool, tracker=None,
               notes: list[str] | None = None, phase: Phases | None = None) -> RunResult:
    """Leaderboard, best model package, report, tracking and summary, all from the run folder's files."""
    primary, ext = job.primary_metric, job.spec.visionsweep
    run_dir = store.local
    phase = phase if phase is not None else Phases()
    default_model = job.training_parameters.get("model_name") or hp.DEFAULT_MODEL[job.task]
    with phase("export"):
        rows = leaderboard_rows(read_trials(run_dir), primary, default_model)
        write_leaderboard(run_dir / "leaderboard.csv", rows)
        best_trial, best_metric = export_best(store, rows, primary)
    summary: dict[str, Any] = {
        "mode": job.mode, "task": job.task, "primary_metric": primary, "trials": len(rows),
        "best_trial": best_trial, "best_metric": best_metric, "elapsed_s": round(time.time() - t0, 1),
        "timed_out": timed_out, "best_package": f"{store.where}/best" if best_trial else None,
        "stopped_early": sum(r["status"].startswith("stopped (") and r["status"] != "stopped (timeout)"
                             for r in rows),
        "trial_epochs": sum(int(r["epochs_run"] or 0) for r in rows),
    }
    weights_plan = read_json(run_dir / "weights.json", {})
    summary["pretrained"] = weights_plan.get("pretrained", ext.pretrained)
    summary["initial_weights"] = ({"checkpoint_run_id": weights_plan["checkpoint_run_id"]}
                                  if weights_plan.get("checkpoint_run_id") else
                                  {name: f"{m['source']}: {m['where']}" for name, m in
                                   weights_plan.get("models", {}).items()} if summary["pretrained"] else "none")
    if tracker is not None:
        with phase("tracking"):
            try:
                summary["tracking"] = tracker.finish(best_trial, best_metric, run_dir / "best" if best_trial else None,
                                                     ext.tracking.register_model)
            except Exception as e:  # tracking must never lose a finished sweep
                log.warning("MLflow tracking could not be finished: %s", e)
                summary["tracking"] = {"error": str(e)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")  # the report reads it
    with phase("report"):
        try:
            from scheduler.report import write_report

            write_report(run_dir)
        except Exception as e:  # the report is a view; never fail the run for it
            log.warning("report not written: %s", e)
    summary["timings_s"] = {**phase, "total": round(time.time() - t0, 2)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, rows, best_trial, best_metric, time.time() - t0, timed_out, notes or [], store.where)


def _checkpoints(store: RunStore, trial_id: str) -> list[str]:
    """A trial's checkpoints: Tune's (one-worker trials) or its Ray Train run's (data-parallel trials)."""
    # (Ray Train keeps a checkpoint_manager_snapshot.json next to its checkpoint folders)
    return [*store.glob(f"ray/{SWEEP}/{trial_id}/checkpoint_*", dirs_only=True),
            *store.glob(f"ray/{TRAIN}/{trial_id}/checkpoint_*", dirs_only=True)]


def export_best(store: RunStore, rows: list[dict[str, Any]], primary: str) -> tuple[str | None, float | None]:
    """Copy the best trial's best checkpoint (a model package) to ``<run>/best``."""
    run_dir = store.local
    best_dir = run_dir / "best"
    for row in rows:  # best first: the first trial with a checkpoint wins
        if row.get(primary) is None:
            continue
        scored = []
        for ck in _checkpoints(store, row["trial_id"]):
            try:
                value = json.loads(store.read_text(f"{ck}/metrics.json")).get(primary, -math.inf)
            except (FileNotFoundError, ValueError):
                continue
            scored.append((value, ck.rsplit("/", 1)[-1], ck))
        if not scored:
            continue
        _, _, ck = max(scored)
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            store.download(ck, Path(tmp) / "ckpt")
            copy_package(Path(tmp) / "ckpt", Path(tmp) / "best")
            if best_dir.exists():
                shutil.rmtree(best_dir)
            shutil.move(str(Path(tmp) / "best"), best_dir)
        return row["trial_id"], row[primary]
    if not any(r.get(primary) is not None for r in rows):
        raise VisionsweepError(f"no trial reported {primary}; see {run_dir}/trials/*/status.json")
    return None, None


def resume_run(run_dir: str | Path, echo: Callable[[str], None] | None = None) -> RunResult:
    """Continue a sweep whose controller died or was cancelled (§8.7 "resume child runs").

    ``run_dir`` may be a storage URL: its files are copied to a staging folder first, so a sweep whose
    controller's node was lost goes on from any machine.
    """
    store = RunStore.at(run_dir)
    store.pull()
    run_dir = store.local
    meta_f = run_dir / "run.json"
    if not meta_f.is_file():
        raise VisionsweepError(f"{store.where}: not a visionsweep run folder (no run.json)")
    meta = json.loads(meta_f.read_text())
    source = Path(meta["source"]) if meta.get("source") else None
    stored = (run_dir / "job.yml").read_text()
    job = parse_job(stored, source=source, base_dir=Path(meta["base_dir"]))
    if source is not None and source.is_file():
        # the run folder keeps credentials as ***: take them from the job file it was started from, when
        # that file is still the job the run folder holds
        original = parse_job(source.read_text(), source=source, base_dir=Path(meta["base_dir"]))
        if original.redacted_text() == stored:
            job = original
    return run_job(job, store, echo, resume=True, datastores=meta.get("datastores"))

"""The sweep controller: a validated job -> a Ray Tune run -> a run folder with the best model package.

Run folder::
    job.yml                 the job as submitted, credentials in storage_options as *** (run.json: its source,
                            display_name, description and tags)
    job.resolved.yaml       the job as it runs (defaults, clamped limits, v2 names, mode)
    data/                   summary.json (classes, counts, warnings) and the train/valid split as JSONL
    trials/<id>/            params.json (sampled, fixed and default hyperparameters), metrics.jsonl (one line per
                            evaluation), status.json
    ray/                    Ray Tune's experiment storage (trial checkpoints, searcher state)
    weights.json            where each model's initial weights were found before the trials (or that every model
                            starts from random initialisation: visionsweep.pretrained: false)
    automode.json           AutoMode only: the models and ranges it chose, and why; its budget (measured cost,
                            trials, epochs, input sizes, concurrency, predicted minutes) and, at the end, the
                            actual minutes and trials started and finished
    leaderboard.csv         one row per trial, best first
    best/                   the model package of the best trial
    outputs/mlflow-model/   the same model in the managed service's layout (§9.1): MLflow files, artifacts/ with
                            the package's files (artifacts/settings.json: its inference settings)
    trials/<id>/log.txt     what the trial printed (warnings and errors included)
    sweep.json              the sweep while it runs: its size, start and heartbeat (``visionsweep status``)
    report.html             the sweep report, rewritten while the sweep runs (``visionsweep report RUN`` rewrites it)
    mlflow.db, tracking.json  MLflow tracking (parent run = sweep, child runs = trials)
    summary.json            mode, timings, best trial, where everything is

The controller is resumable: ``resume_run`` restores the Tune experiment from ``ray/``; every
record it writes itself is rebuilt from the per-trial files, never kept only in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from cluster.connect import connect, gpus_per_node
from scheduler.export import Phases, RunResult, finish_run
from scheduler.live import LiveView, write_sweep_file
from scheduler.plan import all_hyperparameters, build_plan, trial_fixed
from scheduler.preflight import check_supported, check_weights, weights_available, weights_config, weights_lines
from scheduler.resources import capacity_shortfall, local_gpus, trial_resources, workers_per_trial
from scheduler.runfolder import CANCELLED, RunFolderCallback, mark_unfinished, read_json, read_trials
from scheduler.runstore import SWEEP, RunStore, mirror_callback
from scheduler.spec import Job, check_data_paths, parse_job, redact
from scheduler.stops import Cancelled, StopSignals
from trainers.data import (ImageStore, PreparedData, load_data_assets, load_datastores, prepare_data,
                           resolve_data_asset, resolve_url)
from trainers.data import storage
from trainers.data.credentials import EnvCredentials
from trainers.data.images import default_cache_dir
from trainers.data.urls import is_remote
from trainers.errors import VisionsweepError
from trainers.labels import label_json

log = logging.getLogger(__name__)


clock = time.time  # the job's clock for limits.timeout_minutes (a test moves it past data preparation)


STATE_SYNC_S = 2  # seconds between uploads of Tune's experiment state (TUNE_GLOBAL_CHECKPOINT_S is 2 too)


def default_run_dir(job: Job) -> Path:
    name = job.spec.name or job.spec.experiment_name or (job.source.stem if job.source else "job")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def image_store(job: Job) -> ImageStore:
    """How trials read images: storage options, the node cache (§11.2) and whether images stream."""
    ext = job.spec.visionsweep
    cache_dir = ext.cache.dir or default_cache_dir()
    # no limit set: each node sizes its cache to its own disk (trainers.data.images.disk_budget)
    max_bytes = int(ext.cache.max_size_gb * 2**30) if ext.cache.max_size_gb is not None else None
    return ImageStore(storage_options=dict(ext.storage_options), cache_dir=cache_dir, cache_max_bytes=max_bytes,
                      stream=job.advanced.stream_image_files, bad_images=ext.bad_images)


def _prepare(job: Job, run_dir: Path, datastores_file: str | None = None,
             data_assets_file: str | None = None) -> PreparedData:
    spec, ext = job.spec, job.spec.visionsweep
    datastores = load_datastores(ext.datastores, datastores_file)
    assets = load_data_assets(ext.data_assets, data_assets_file)
    base = str(job.base_dir)

    def data_path(path: str, where: str) -> str:
        return resolve_url(resolve_data_asset(path, assets, where), base, datastores, where)

    train_path = data_path(spec.training_data.path, "training_data.path")
    valid_path = data_path(spec.validation_data.path, "validation_data.path") if spec.validation_data else None
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


def _init_package(job: Job) -> str | None:
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


def _echo_default(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run_job(job: Job, output: str | Path | RunStore | None = None, echo: Callable[[str], None] | None = None,
            resume: bool = False, datastores: str | None = None, data_assets: str | None = None) -> RunResult:
    """Run a validated job on the connected Ray cluster and write its run folder (a path or a storage URL)."""
    echo = echo or _echo_default
    t0 = clock()  # limits.timeout_minutes covers the whole job: checks, data preparation, Ray start, trials
    check_supported(job)
    check_data_paths(job)
    store = output if isinstance(output, RunStore) else RunStore.at(output or default_run_dir(job))
    run_dir = store.local
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        stops = StopSignals()  # Ctrl-C and SIGTERM: one way to stop (scheduler.stops)
        with stops:
            return _run(job, store, echo, resume, datastores, data_assets, t0, stops)
    except KeyboardInterrupt as e:  # Cancelled, or what a library made of it (ray.get raises its own)
        if getattr(e, "detailed", False):
            raise
        c = Cancelled(stops.signum or signal.SIGINT)
        if store.exists(f"ray/{SWEEP}/tuner.pkl"):  # the sweep had started: a resume goes on
            raise Cancelled(c.signum, f"cancelled by {c.signal_name}; `visionsweep resume {store.where}` goes "
                                      "on") from None
        raise Cancelled(c.signum, f"cancelled by {c.signal_name} before the first trial: nothing to resume (the "
                                  f"run folder {store.where} holds the job and its prepared data); run the job "
                                  "again") from None
    finally:
        store.close()  # the run folder on storage gets every file, even when the sweep failed


def _run(job: Job, store: RunStore, echo: Callable[[str], None], resume: bool, datastores: str | None,
         data_assets: str | None, t0: float, stops: StopSignals) -> RunResult:
    from ray import tune

    from scheduler.tracking import MlflowTracker, job_tags
    from trainers.launch import train_trial

    run_dir = store.local
    phase = Phases()
    if store.remote is None and in_job_package(run_dir):
        echo(f"warning: the run folder {run_dir} is inside this Ray job's working directory as Ray unpacked it "
             "(runtime_resources/working_dir_files/...): Ray deletes that copy with the cluster's session, or sooner "
             "to make room for other jobs' packages. Give --output an absolute path on a disk that stays, or a "
             "storage URL (az://..., s3://...)")
    if not resume:
        (run_dir / "job.yml").write_text(job.redacted_text())
        (run_dir / "run.json").write_text(json.dumps({
            "source": str(job.source.resolve()) if job.source else None, "base_dir": str(job.base_dir),
            "datastores": str(Path(datastores).resolve()) if datastores else None,
            "data_assets": str(Path(data_assets).resolve()) if data_assets else None,
            **_labels(job),
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
        data = _prepare(job, run_dir, datastores, data_assets)
    store.push()
    echo(f"data: {len(data.train)} training / {len(data.valid)} validation images, {len(data.classes)} classes")
    for w in data.warnings:
        echo(f"warning: {w}")
    spec, ext = job.spec, job.spec.visionsweep
    # Data-parallel trials need the dashboard: Ray Train frees a stopped trial's workers through it. (It matters
    # for an embedded Ray only, whose GPUs are this machine's; a cluster has its dashboard already.)
    with phase("ray_start"):
        echo(f"ray: {connect(dashboard=workers_per_trial(job, local_gpus()) > 1)}")
    stops.arm()  # ray.init installed its own SIGTERM handler
    primary = job.primary_metric
    res = trial_resources(job, gpus_per_node(), store)
    group, has_gpu = res.group, res.has_gpu
    short = capacity_shortfall(group)
    if short and not os.environ.get("RAY_ADDRESS"):  # an embedded Ray never grows: the trials would wait forever
        raise VisionsweepError(short.split(" now:")[0] + "; " + short.rsplit(" (", 1)[-1].rstrip(")"))
    if short:
        echo(f"warning: {short}")
    available = weights_available(job, wcfg)
    plan = build_plan(job, has_gpu, run_dir, available)
    if plan.automode is not None:  # AutoMode: measure what a trial costs, then fit the plan to the time limit
        with phase("cost_probe"):
            budget = _automode_budget(job, plan.automode, data, wcfg, res, init_package, run_dir, t0, resume, echo)
        plan = build_plan(job, has_gpu, run_dir, available, budget)
        for line in budget.messages:
            echo(line)
    if wplan is None:
        models = plan.automode["models"]
        wcfg, wplan = check_weights(job, wcfg, [m["model_name"] for m in models],
                                    [m["settings"]["model_size"] for m in models
                                     if "model_size" in m.get("settings", {})] or None)
    (run_dir / "weights.json").write_text(json.dumps(wplan, indent=2) + "\n")
    for line in (weights_lines(wplan) if not init_package else [f"weights: from checkpoint_run_id {init_package}"]):
        echo(line)
    for n in plan.notes:
        echo(n)
    if plan.automode is not None:
        (run_dir / "automode.json").write_text(json.dumps(plan.automode, indent=2) + "\n")
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data,
                             fixed=trial_fixed(job),
                             weights=wcfg,
                             cpus=ext.cpus_per_trial, init_package=init_package, group=group, primary=primary,
                             credentials=EnvCredentials.from_environ(), log_level=spec.log_verbosity,
                             failed={t.trial_id: t.error or "failed" for t in read_trials(run_dir).values()
                                     if t.status == "error" and not t.retry}),
        {"cpu": res.cpus, "gpu": res.gpus},
    )
    budget_s = spec.limits.timeout_minutes * 60
    left_s = budget_s - (clock() - t0)  # what data preparation and the cluster's start left to the trials
    # (checked before the tracker and the live view start: nothing of the sweep's is left running on this error)
    if left_s <= 0 and not resume:
        raise VisionsweepError(
            f"limits.timeout_minutes ({spec.limits.timeout_minutes}) ran out before the first trial: data "
            f"preparation and the cluster's start took {clock() - t0:.0f}s; the prepared data is in "
            f"{store.where}/data. Raise limits.timeout_minutes.")
    fixed = trial_fixed(job)
    everything = functools.partial(all_hyperparameters, job.task, fixed)  # params.json and MLflow: all of them
    callbacks: list[Any] = [RunFolderCallback(store, primary, plan.total_trials, echo, everything, fixed),
                            mirror_callback(store)]
    tracker = None
    if ext.tracking.enabled:
        tracker = MlflowTracker(run_dir, ext.tracking.uri, ext.tracking.experiment or spec.experiment_name or
                                "visionsweep", spec.display_name or spec.name or run_dir.name, primary, job_tags(spec),
                                resolve=everything, key=store.where)
        callbacks.append(tracker)
    concurrent = plan.max_concurrent or spec.limits.max_concurrent_trials
    write_sweep_file(run_dir, task=job.task, mode=job.mode, primary_metric=primary, total_trials=plan.total_trials,
                     max_concurrent_trials=concurrent, started=time.time(),
                     updated=time.time())
    live = LiveView(store)
    callbacks.append(live)
    try:  # from here the live view runs: stopped on every path, or it rewrites the folder for the life of the process
        storage_path, storage_fs = store.ray_storage()
        if resume:
            from ray.tune import Tuner

            if not store.exists(f"ray/{SWEEP}/tuner.pkl"):
                raise VisionsweepError(f"{store.where}: nothing to resume (no Ray Tune experiment in ray/{SWEEP})")
            tuner = Tuner.restore(f"{storage_path}/{SWEEP}", trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=storage_fs)
            echo(resume_line(read_trials(run_dir).values(), plan.total_trials))
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=primary, mode="max", search_alg=plan.searcher, scheduler=plan.scheduler,
                    num_samples=plan.total_trials, max_concurrent_trials=concurrent,
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
        echo(f"sweep: {job.mode} mode, {plan.algorithm} sampling, {plan.total_trials} trial(s), "
             f"{concurrent} at a time, primary metric {primary}, {res.describe()}, "
             f"images {'streamed' if data.store.stream else 'downloaded to the node cache first'}")
        echo(f"report: {store.where}/report.html (live: it refreshes itself while the sweep runs); "
             f"`visionsweep status {store.where} --watch` follows the trials here")
        with phase("trials"), stops.sweep():
            tuner.fit()
    finally:
        live.stop()
        timed_out = clock() - t0 >= budget_s
        cancelled = stops.cancelled
        mark_unfinished(run_dir, CANCELLED if cancelled else "stopped (timeout)" if timed_out else "stopped")
        if cancelled:
            write_sweep_file(run_dir, state=CANCELLED, cancelled_by=cancelled.signal_name, updated=time.time())
    result = finish_run(job, store, t0, timed_out, tracker, plan.notes, phase, data.store, cancelled)
    if plan.automode is not None:
        _automode_actual(run_dir, plan.automode, t0, timed_out)
    if cancelled:
        raise Cancelled(cancelled.signum, cancel_message(run_dir, cancelled, store.where))
    return result


def resume_line(trials, total: int) -> str:
    """What a resume does with each trial: the finished ones are kept, the interrupted ones go on from their last
    checkpoint (an errored one once, unless its error was of its own settings), the rest start new."""
    trials = list(trials)
    kept = [t.trial_id for t in trials if t.finished and not (t.status == "error" and t.retry)]
    going = [t.trial_id for t in trials if t.trial_id not in kept]
    new = max(0, total - len(trials))

    def ids(xs: list[str]) -> str:
        return f" ({', '.join(xs[:8])}{', ...' if len(xs) > 8 else ''})" if xs else ""
    return (f"resume: {len(kept)} finished trial(s) kept{ids(kept)}, {len(going)} continue from their last "
            f"checkpoint{ids(going)}, {new} new")


def cancel_message(run_dir: Path, cancelled: Cancelled, where: str) -> str:
    """The last words of a cancelled ``run``/``resume``: what is kept, and the command that goes on."""
    trials = read_trials(run_dir).values()
    done = sum(t.finished for t in trials)
    going = sum(t.status == CANCELLED for t in trials)
    return (f"cancelled by {cancelled.signal_name}: {done} finished trial(s) kept, {going} interrupted (each goes "
            f"on from its last checkpoint); `visionsweep resume {where}` goes on")


def _automode_budget(job: Job, p: dict[str, Any], data: PreparedData, wcfg, res, init_package: str | None,
                     run_dir: Path, t0: float, resume: bool, echo: Callable[[str], None]):
    """AutoMode's budget (``scheduler.budget``): the cost probe on the cluster (``scheduler.costprobe``), then the
    trials, epochs, input sizes and concurrency fitted to ``limits.timeout_minutes``. A resumed run keeps the
    budget its first start chose (Tune restores that sweep's searcher and scheduler)."""
    from scheduler import automode
    from scheduler.budget import BudgetPlan
    from scheduler.costprobe import PROBE_TIMEOUT_S, measure, native_size, trial_slots

    earlier = read_json(run_dir / "automode.json", {}).get("budget") if resume else None
    if earlier:
        return BudgetPlan.from_json(earlier)
    limits, fixed = job.spec.limits, job.training_parameters
    slots = trial_slots(res)
    # a concurrency the job set is a cap; unset, AutoMode runs as many trials at once as the cluster holds
    cap = limits.max_concurrent_trials if "max_concurrent_trials" in limits.model_fields_set else slots
    native = native_size(data)
    cost, why = None, "no time left"
    left = limits.timeout_minutes * 60 - (clock() - t0)
    if left > 0:
        echo("AutoMode budget: measuring what an epoch costs ("
             + ", ".join(dict.fromkeys(m["model_name"] for m in p["models"])) + ")")
        try:
            runs = automode.probe_runs(job.task, p, fixed, native)
            cost = measure(job.task, trial_fixed(job), runs, data, wcfg, res, init_package,
                           timeout_s=min(PROBE_TIMEOUT_S, max(60.0, left / 4)))
        except Exception as e:  # the trials report a model's own error; the plan goes on unmeasured
            cause = getattr(e, "cause", None) or e
            why = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            log.warning("AutoMode cost probe failed", exc_info=True)
    spent = clock() - t0
    return automode.fit_budget(job.task, p, fixed, cost, train_images=len(data.train), valid_images=len(data.valid),
                               concurrency=max(1, min(cap, slots)), left_s=limits.timeout_minutes * 60 - spent,
                               spent_s=spent, limit_given="timeout_minutes" in limits.model_fields_set,
                               native=native, why_unmeasured=why)


def _automode_actual(run_dir: Path, p: dict[str, Any], t0: float, timed_out: bool) -> None:
    """The end of an AutoMode run: what it took and how many trials started and finished, beside the plan."""
    trials = read_trials(run_dir).values()
    minutes = (clock() - t0) / 60
    stopped = [t for t in trials if t.status.startswith("stopped (") and t.status != "stopped (timeout)"]
    limit = (p.get("budget") or {}).get("limit_minutes")
    p = {**p, "actual": {
        "minutes": round(minutes, 2),
        "trials_started": sum(t.status != "pending" for t in trials),
        "trials_finished": sum(t.status == "completed" for t in trials) + len(stopped),
        "trials_completed": sum(t.status == "completed" for t in trials),
        "trials_stopped_early": len(stopped),
        "trials_stopped_by_timeout": sum(t.status == "stopped (timeout)" for t in trials),
        "trials_failed": sum(t.status == "error" for t in trials),
        "timed_out": timed_out,
        "within_limit": None if limit is None else minutes <= limit,
    }}
    (run_dir / "automode.json").write_text(json.dumps(p, indent=2) + "\n")


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


def _trial_dirname(trial) -> str:
    return trial.trial_id


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
    return run_job(job, store, echo, resume=True, datastores=meta.get("datastores"),
                   data_assets=meta.get("data_assets"))

"""Stage 5, trials: the Ray Tune run. The run folder's recorder, MLflow and the live view follow it as callbacks;
a resume restores Tune's experiment from RUN/ray/; Ctrl-C and SIGTERM end it the one way ``scheduler.stops`` says.
Trials still running when it ends are marked (cancelled, or stopped at the time limit)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from scheduler.live import LiveView
from scheduler.plan import all_hyperparameters, trial_fixed
from scheduler.recorder import RunFolderCallback
from scheduler.resources import TrialResources
from scheduler.runfolder import CANCELLED, mark_unfinished, read_trials, write_sweep_file
from scheduler.runstore import SWEEP, mirror_callback
from scheduler.stages.check import Checked
from scheduler.stages.context import RunContext
from scheduler.stages.planning import Planned
from scheduler.stops import Cancelled
from trainers.data import PreparedData
from trainers.data.credentials import EnvCredentials
from trainers.errors import VisionsweepError

STATE_SYNC_S = 2  # seconds between uploads of Tune's experiment state (TUNE_GLOBAL_CHECKPOINT_S is 2 too)


@dataclass
class Outcome:
    timed_out: bool  # limits.timeout_minutes ended it
    cancelled: Cancelled | None  # a signal ended it (scheduler.stops)
    tracker: Any  # the MLflow tracker whose finish ends the sweep's runs (None: tracking off)


def run_trials(ctx: RunContext, checked: Checked, data: PreparedData, res: TrialResources,
               planned: Planned) -> Outcome:
    from ray import tune

    from scheduler.tracking import MlflowTracker, job_tags
    from trainers.launch import train_trial

    job, store, echo, resume, stops, phase = ctx.job, ctx.store, ctx.echo, ctx.resume, ctx.stops, ctx.phase
    run_dir, plan, wcfg, init_package = ctx.run_dir, planned.plan, planned.weights, checked.init_package
    spec, ext, primary, group = job.spec, job.spec.visionsweep, job.primary_metric, res.group
    fixed = trial_fixed(job)  # what every trial's sampled values are resolved against
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data,
                             fixed=fixed,
                             weights=wcfg,
                             cpus=ext.cpus_per_trial, init_package=init_package, group=group, primary=primary,
                             credentials=EnvCredentials.from_environ(), log_level=spec.log_verbosity,
                             failed={t.trial_id: t.error or "failed" for t in read_trials(run_dir).values()
                                     if t.status == "error" and not t.retry}),
        res.placement(),
    )
    budget_s = spec.limits.timeout_minutes * 60
    left_s = ctx.left_s()  # what data preparation and the cluster's start left to the trials
    # (checked before the tracker and the live view start: nothing of the sweep's is left running on this error)
    if left_s <= 0 and not resume:
        raise VisionsweepError(
            f"limits.timeout_minutes ({spec.limits.timeout_minutes}) ran out before the first trial: data "
            f"preparation and the cluster's start took {ctx.elapsed_s():.0f}s; the prepared data is in "
            f"{store.where}/data. Raise limits.timeout_minutes.")
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
                    # One by score: Tune keeps the best checkpoint and, whatever its score, the latest (what a
                    # resume goes on from); and with num_to_keep 1 it snapshots its state after every trial
                    # checkpoint instead of every STATE_SYNC_S, so a controller or head lost right after an
                    # evaluation still resumes after it (tests/test_remote_run.py, issue 30)
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=primary,
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
        timed_out = ctx.elapsed_s() >= budget_s
        cancelled = stops.cancelled
        mark_unfinished(run_dir, CANCELLED if cancelled else "stopped (timeout)" if timed_out else "stopped")
        if cancelled:
            write_sweep_file(run_dir, state=CANCELLED, cancelled_by=cancelled.signal_name, updated=time.time())
    return Outcome(timed_out, cancelled, tracker)


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


def _trial_dirname(trial) -> str:
    return trial.trial_id

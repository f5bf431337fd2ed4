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

A run is a pipeline of named stages (``scheduler.stages``: check, prepare, connect, plan, trials, finish). The
controller is resumable: ``resume_run`` restores the Tune experiment from ``ray/``; every record it writes itself is
rebuilt from the per-trial files, never kept only in memory.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from scheduler.finish import RunResult
from scheduler.preflight import check_supported
from scheduler.runstore import SWEEP, RunStore
from scheduler.spec import Job, check_data_paths, parse_job
from scheduler.stages import context
from scheduler.stages.check import check
from scheduler.stages.connect import connect_cluster
from scheduler.stages.data_check import check_prepared_data
from scheduler.stages.finish import finish_sweep
from scheduler.stages.planning import plan_sweep
from scheduler.stages.prepare import prepare
from scheduler.stages.trials import run_trials
from scheduler.stops import Cancelled, StopSignals
from trainers.errors import VisionsweepError

log = logging.getLogger(__name__)


def default_run_dir(job: Job) -> Path:
    name = job.spec.name or job.spec.experiment_name or (job.source.stem if job.source else "job")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _echo_default(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run_job(job: Job, output: str | Path | RunStore | None = None, echo: Callable[[str], None] | None = None,
            resume: bool = False, datastores: str | None = None, data_assets: str | None = None,
            release_ray: bool = False) -> RunResult:
    """Run a validated job on the connected Ray cluster and write its run folder (a path or a storage URL).
    ``release_ray``: an embedded Ray this call starts is shut down as soon as the trials are over, before the
    deployment figures time anything (a command that ends with the run; a notebook keeps it for the next job)."""
    echo = echo or _echo_default
    t0 = context.clock()  # limits.timeout_minutes covers the whole job: checks, data, Ray's start, trials
    check_supported(job)
    check_data_paths(job)
    store = output if isinstance(output, RunStore) else RunStore.at(output or default_run_dir(job))
    store.local.mkdir(parents=True, exist_ok=True)
    stops = StopSignals()  # Ctrl-C and SIGTERM: one way to stop (scheduler.stops)
    try:
        with stops:
            ctx = context.RunContext(job, store, echo, resume, t0, stops, release_ray=release_ray)
            return _pipeline(ctx, datastores, data_assets)
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


def _pipeline(ctx: context.RunContext, datastores: str | None, data_assets: str | None) -> RunResult:
    """The stages of a run, in order (``scheduler.stages``)."""
    checked = check(ctx, datastores, data_assets)
    data = prepare(ctx, datastores, data_assets)
    resources = connect_cluster(ctx)
    check_prepared_data(ctx, data)
    planned = plan_sweep(ctx, checked, data, resources)
    outcome = run_trials(ctx, checked, data, resources, planned)
    return finish_sweep(ctx, planned, outcome, data)


def resume_run(run_dir: str | Path, echo: Callable[[str], None] | None = None, release_ray: bool = False) -> RunResult:
    """Continue a sweep whose controller died or was cancelled (§8.7 "resume child runs"); ``release_ray`` as
    :func:`run_job`'s.

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
                   data_assets=meta.get("data_assets"), release_ray=release_ray)

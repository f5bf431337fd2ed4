"""Controller overhead: N short dummy trials through visionsweep's controller pieces vs. plain Ray Tune (issue 3).

Both sides run the same dummy trainable (5 ``tune.report`` calls, no sleep, 1 CPU per trial), N trials,
2 at a time, on one ``ray.init(num_cpus=2)`` in this process. Only what surrounds the trainable differs:

* plain: ``tune.Tuner(trainable, param_space={"learning_rate": tune.uniform(...)}, num_samples=N,
  max_concurrent_trials=2)`` with ``RunConfig(verbose=0, storage_path=TMP)``.
* visionsweep: exactly what ``scheduler.controller.run_job`` adds around a trainable: ``SpaceSearcher``
  over a spec search space (learning_rate uniform), a ``PolicyScheduler`` (median_stopping with a delay
  so large that it never stops anything), ``RunFolderCallback`` (run folder in TMP), ``MlflowTracker``
  (sqlite store in the run folder), ``trial_dirname_creator``, time budget and ``CheckpointConfig`` as
  run_job sets them, ``RunConfig(verbose=0)``; then the post-run work run_job does from the files:
  ``mark_unfinished``, ``leaderboard_rows(read_trials(run_dir))`` + ``write_leaderboard`` and the
  tracker's ``finish`` (parent run tagged and terminated).

One untimed warm-up of each side, then the sides alternate (plain, visionsweep, ...) ``--repeats`` times.
A side's time is from building its searcher/scheduler/callbacks/Tuner to the end of its post-run work.
The figure is the median per side; the target is median(visionsweep) / median(plain) <= 1.05.

Where the extra time goes:

* ``--breakdown`` adds ablation sides to the alternation (visionsweep without MLflow, and without MLflow
  and the run folder).
* ``--hooks`` times every driver-side hook of the visionsweep side (callbacks, scheduler, searcher, and the
  MLflow client calls and store connection inside the tracker) and prints the median per timed run. These
  hooks run on Tune's event loop, so their time is time the loop is blocked; unlike the wall times it
  hardly depends on how long Ray takes to start the trials' worker processes (the bulk of the wall time
  with trials this short).

Each line also shows the 1-minute load average after the run: on 2 cores, anything much above 2 means
another process was competing for the CPU.

    .venv/bin/python bench/controller_overhead.py [--trials 16] [--repeats 3] [--target 1.05] [--breakdown]
                                                  [--hooks]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from machine_info import describe, repeats_table, verdict

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

PRIMARY = "accuracy"
CONCURRENT = 2
REPORTS = 5
LR = (0.001, 0.1)


def dummy(config):
    for i in range(REPORTS):
        tune.report({"accuracy": min(1.0, config["learning_rate"] * 5 * (i + 1)), "epoch": i + 1})


TRAINABLE = tune.with_resources(dummy, {"cpu": 1, "gpu": 0})


def machine() -> str:
    return describe("ray", "mlflow")


def run_plain(root: Path, n: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        TRAINABLE,
        param_space={"learning_rate": tune.uniform(*LR)},
        tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=CONCURRENT),
        run_config=tune.RunConfig(storage_path=str(root), verbose=0),
    )
    results = tuner.fit()
    assert len(results) == n and not results.errors, results.errors
    return {"total": time.perf_counter() - t0}


def run_visionsweep(root: Path, n: int, seed: int, mlflow: bool = True, runfolder: bool = True,
                    live_s: float | None = None) -> dict[str, float]:
    """``live_s``: with the live view (``scheduler.live.LiveView``) rewriting the report at most every ``live_s``
    seconds, as ``run_job`` runs it (None: without it)."""
    from pydantic import TypeAdapter

    from scheduler.leaderboard import leaderboard_rows, write_leaderboard
    from scheduler.policies import create_scheduler
    from scheduler.policies.configs import MedianStoppingSettings
    from scheduler.recorder import RunFolderCallback
    from scheduler.runfolder import mark_unfinished, read_trials
    from scheduler.runstore import SWEEP
    from scheduler.searchers import SpaceSearcher
    from scheduler.space import Distribution
    from scheduler.stages.trials import _trial_dirname
    from scheduler.tracking import MlflowTracker

    t0 = time.perf_counter()
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    space = [{"learning_rate": TypeAdapter(Distribution).validate_python(
        {"type": "uniform", "min_value": LR[0], "max_value": LR[1]})}]
    searcher = SpaceSearcher(space, "random", n, seed, PRIMARY, "max")
    policy = MedianStoppingSettings(type="median_stopping", evaluation_interval=1, delay_evaluation=10_000)
    scheduler = create_scheduler(policy, PRIMARY, REPORTS, str(run_dir))
    callbacks = [RunFolderCallback(run_dir, PRIMARY, n, echo=lambda s: None)] if runfolder else []
    tracker = MlflowTracker(run_dir, None, "bench", "controller-overhead", PRIMARY) if mlflow else None
    callbacks += [tracker] if tracker else []
    live = None
    if live_s is not None:
        from scheduler.live import LiveView
        from scheduler.runstore import RunStore

        live = LiveView(RunStore.at(run_dir), interval_s=live_s)
        callbacks.append(live)
    tuner = tune.Tuner(
        TRAINABLE,
        tune_config=tune.TuneConfig(
            metric=PRIMARY, mode="max", search_alg=searcher, scheduler=scheduler, num_samples=n,
            max_concurrent_trials=CONCURRENT, time_budget_s=10080 * 60, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=SWEEP, storage_path=str(run_dir / "ray"), verbose=0, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=PRIMARY,
                                                    checkpoint_score_order="max")),
    )
    results = tuner.fit()
    if live is not None:
        live.stop()
    t_fit = time.perf_counter()
    assert len(results) == n and not results.errors, results.errors
    if runfolder:
        mark_unfinished(run_dir, "stopped")
        rows = leaderboard_rows(read_trials(run_dir), PRIMARY, "resnet18")
        write_leaderboard(run_dir / "leaderboard.csv", rows)
        assert len(rows) == n and all(r["status"] == "completed" and r["epochs_run"] == REPORTS for r in rows), rows
        if tracker is not None:
            tracker.finish(rows[0]["trial_id"], rows[0][PRIMARY], None)
    end = time.perf_counter()
    return {"total": end - t0, "setup+fit": t_fit - t0, "post": end - t_fit}


def instrument() -> dict[str, list]:
    """Wrap the visionsweep side's driver-side hooks with timers: name -> [calls, seconds]."""
    import collections
    import functools

    from mlflow.tracking import MlflowClient

    from scheduler.policies.ray_adapter import PolicyScheduler
    from scheduler.recorder import RunFolderCallback
    from scheduler.searchers import SpaceSearcher
    from scheduler.tracking import MlflowTracker

    acc: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])

    def timed(label, f):
        @functools.wraps(f)
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                e = acc[label]
                e[0] += 1
                e[1] += time.perf_counter() - t
        return g

    hooks = {RunFolderCallback: ("on_trial_start", "on_trial_result", "on_trial_complete"),
             MlflowTracker: ("on_trial_start", "on_trial_result", "on_trial_complete", "finish"),
             PolicyScheduler: ("on_trial_result", "on_trial_complete", "save"),
             SpaceSearcher: ("suggest", "save"),
             MlflowClient: ("log_metric", "log_param", "create_run", "set_terminated", "set_tag",
                            "get_experiment_by_name", "create_experiment")}
    for cls, names in hooks.items():
        for n in names:
            prefix = "  mlflow " if cls is MlflowClient else ""
            setattr(cls, n, timed(f"{prefix}{cls.__name__}.{n}", getattr(cls, n)))
    # The tracker connects lazily (first trial start): the store is created then (sqlite + migrations).
    get_client, connect = MlflowTracker.client.fget, timed("  MlflowTracker: connect + create store",
                                                             MlflowTracker.client.fget)
    MlflowTracker.client = property(lambda self: connect(self) if self._client is None else get_client(self))
    return acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=1.05)
    ap.add_argument("--breakdown", action="store_true",
                    help="also run visionsweep without MLflow, and without MLflow and the run folder")
    ap.add_argument("--hooks", action="store_true", help="time the visionsweep side's driver-side hooks")
    args = ap.parse_args()

    logging.getLogger("alembic").setLevel(logging.WARNING)
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {machine()}")
    print(f"setup:   {args.trials} dummy trials x {REPORTS} reports (no sleep), 1 CPU each, {CONCURRENT} at a time, "
          f"1 warm-up + {args.repeats} timed runs per side, alternated", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    acc = instrument() if args.hooks else None
    hook_runs: list[dict[str, list]] = []

    sides = {"plain": run_plain, "visionsweep": run_visionsweep}
    if args.breakdown:
        sides["vs no MLflow"] = lambda root, n, seed: run_visionsweep(root, n, seed, mlflow=False)
        sides["vs no MLflow/runfolder"] = lambda root, n, seed: run_visionsweep(root, n, seed, mlflow=False,
                                                                               runfolder=False)
    times: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    tmp = Path(tempfile.mkdtemp(prefix="visionsweep-overhead-"))
    try:
        for r in range(args.repeats + 1):
            for side, fn in sides.items():
                if acc is not None:
                    acc.clear()
                t = fn(tmp / f"{side.replace(' ', '_').replace('/', '_')}-{r}", args.trials, args.seed)
                label = "warm-up" if r == 0 else f"repeat {r}"
                extra = "".join(f", {k} {v:.2f}s" for k, v in t.items() if k != "total")
                print(f"  {label:<8} {side:<22} {t['total']:6.2f}s{extra}  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
                if r:
                    times[side].append(t)
                    if acc is not None and side == "visionsweep":
                        hook_runs.append({k: list(v) for k, v in acc.items()})
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    per_repeat = {side: [t["total"] for t in times[side]] for side in sides}
    med = {side: statistics.median(vals) for side, vals in per_repeat.items()}
    print(repeats_table(per_repeat, med, "{:.2f}", "s"))
    for side in sides:
        if side != "plain":
            print(f"\nratio {side} / plain = {med[side] / med['plain']:.3f}", end="")
    if hook_runs:
        print("\n\ndriver-side hooks of the visionsweep side (median over the timed runs):\n")
        print(f"| {'hook':<48} | calls | total ms | ms/call |")
        print("|--------------------------------------------------|------:|---------:|--------:|")
        names = sorted({k for h in hook_runs for k in h},
                       key=lambda k: (k.strip().split(".")[0], -statistics.median(h.get(k, [0, 0])[1]
                                                                               for h in hook_runs)))
        for k in names:
            calls = statistics.median(h.get(k, [0, 0])[0] for h in hook_runs)
            ms = 1000 * statistics.median(h.get(k, [0, 0])[1] for h in hook_runs)
            print(f"| {k:<48} | {calls:5.0f} | {ms:8.1f} | {ms / calls if calls else 0:7.2f} |")
        top = [k for k in names if not k.startswith("  ")]
        total = 1000 * statistics.median(sum(h[k][1] for k in top if k in h) for h in hook_runs)
        print(f"| {'all hooks (un-indented rows)':<48} |       | {total:8.1f} |         |")
    return verdict(med, args.target, higher_is_better=False, gap="\n\n")


if __name__ == "__main__":
    raise SystemExit(main())

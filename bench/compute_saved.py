"""Compute saved by early termination and AutoMode on real data (issue 3).

Four jobs on the bundled Fashion-MNIST sample (``trainers/sample_data/fashion_mnist/train``: 400 images,
10 classes, automatic 20 % validation split), each run through ``scheduler.controller.run_job`` in this
process on one shared ``ray.init(num_cpus=2)``:

* (a) random search, no early termination;
* (b) the same with ``median_stopping`` (evaluation_interval 1, delay_evaluation 5);
* (c) the same with ``asha`` (grace_period 1, reduction_factor 3);
* (d) AutoMode: no search_space, ``limits.max_trials`` only.

All four have the same trial budget (``--trials``, ``--concurrent`` at a time), the same sampler seed,
the same fixed training parameters (``--epochs``, crops 32/32/32, training_batch_size 32,
early_stopping 0; training itself is seeded with random_seed 0 by default) and tracking disabled.
For fairness the search space of (a)-(c) is AutoMode's own CPU plan space,
``scheduler.automode.plan("image_classification", trials, fixed, has_gpu=False)["space"]``: the same
models, the same loguniform learning-rate range, momentum and weight-decay choices. With the same seed
(a)-(c) sample the same configurations in the same order; AutoMode runs the leading model at its
defaults first, then samples the same space from the same seed.

Read from each run's ``summary.json``: ``trial_epochs`` (epochs trained, summed over trials) and
``best_metric`` (best validation accuracy); wall time is measured around ``run_job``.

Targets: ASHA and AutoMode within 0.01 (absolute) of (a)'s best accuracy with <= 1/3 of (a)'s
trial-epochs; median stopping saves >= 25 % of (a)'s trial-epochs.

    .venv/bin/python bench/compute_saved.py [--trials 8] [--concurrent 2] [--epochs 15] [--seed 0]
                                            [--only a,b,c,d] [--keep DIR] [--verbose]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine_info import describe

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DIR = ROOT / "trainers" / "sample_data" / "fashion_mnist" / "train"
TASK = "image_classification"

POLICIES = {
    "a": ("random, no policy", None),
    "b": ("random + median_stopping", "{type: median_stopping, evaluation_interval: 1, delay_evaluation: 5}"),
    "c": ("random + asha", "{type: asha, grace_period: 2, reduction_factor: 3}"),  # judged after the 2 warm-up epochs
    "d": ("AutoMode", None),
}


def machine() -> str:
    return describe("torch", "ray")


def fixed_parameters(epochs: int) -> dict:
    return {"number_of_epochs": epochs, "training_batch_size": 32, "training_crop_size": 32,
            "validation_resize_size": 32, "validation_crop_size": 32, "early_stopping": 0}


def job_text(key: str, trials: int, concurrent: int, epochs: int, seed: int) -> str:
    from scheduler import automode

    fixed = fixed_parameters(epochs)
    lines = ["$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json", "type: automl",
             f"name: compute-saved-{key}", f"task: {TASK}", "compute: local", "target_column_name: label",
             "training_data:", f"  path: {TRAIN_DIR}", "  type: mltable", "training_parameters:"]
    lines += [f"  {k}: {v}" for k, v in fixed.items()]
    lines += ["limits:", f"  max_trials: {trials}", f"  max_concurrent_trials: {concurrent}"]
    if key != "d":
        # AutoMode's CPU plan space, written out as the job's search_space.
        space = automode.explain(automode.plan(TASK, trials, fixed, has_gpu=False))["space"]
        lines.append("search_space:")
        for sub in space:
            for i, (name, dist) in enumerate(sub.items()):
                lines.append(f"  {'- ' if i == 0 else '  '}{name}: {json.dumps(dist)}")
        lines += ["sweep:", "  sampling_algorithm: random"]
        policy = POLICIES[key][1]
        if policy:
            lines.append(f"  early_termination: {policy}")
    lines += ["visionsweep:", f"  seed: {seed}", "  tracking: {enabled: false}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trial budget of every job")
    ap.add_argument("--concurrent", type=int, default=2, help="trials at a time")
    ap.add_argument("--epochs", type=int, default=15, help="number_of_epochs of every trial (the spec default)")
    ap.add_argument("--seed", type=int, default=0, help="visionsweep.seed (sampler) of every job")
    ap.add_argument("--only", default="a,b,c,d", help="which jobs to run, e.g. a,c (a is the reference)")
    ap.add_argument("--keep", help="write the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--verbose", action="store_true", help="print the controller's per-trial progress lines")
    args = ap.parse_args()
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    if any(k not in POLICIES for k in keys):
        ap.error(f"--only takes keys of {', '.join(POLICIES)}")

    import ray

    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {machine()}")
    print(f"setup:   {TASK} on {TRAIN_DIR.relative_to(ROOT)}, {args.trials} trials, {args.concurrent} at a time, "
          f"{args.epochs} epochs, crops 32, batch 32, early_stopping 0, seed {args.seed}, tracking off", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level=logging.WARNING)
    print("search space of (a)-(c) (AutoMode's CPU plan space):\n"
          + "\n".join("  " + ln for ln in job_text("a", args.trials, args.concurrent, args.epochs, args.seed)
                      .split("search_space:\n")[1].split("sweep:")[0].splitlines()), flush=True)

    out = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="visionsweep-compute-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    try:
        for key in keys:
            text = job_text(key, args.trials, args.concurrent, args.epochs, args.seed)
            job = parse_job(text, source=ROOT / "bench" / f"compute_saved_{key}.yml")

            def echo(s: str, key=key) -> None:
                if args.verbose or not s.startswith("["):
                    print(f"  ({key}) {s}", flush=True)

            print(f"\n({key}) {POLICIES[key][0]}: {job.mode} mode", flush=True)
            t0 = time.perf_counter()
            res = run_job(job, out / key, echo=echo)
            wall = time.perf_counter() - t0
            summary = json.loads((out / key / "summary.json").read_text())
            results[key] = {"summary": summary, "wall": wall}
            for r in res.rows:
                print(f"  ({key}) {r['trial_id']:<10} {r['model_name']:<12} {r['status']:<26} "
                      f"epochs {r['epochs_run']:>3}  accuracy {r['accuracy']:.4f}  {r['params']}", flush=True)
            print(f"  ({key}) trial-epochs {summary['trial_epochs']}, best accuracy {summary['best_metric']:.4f}, "
                  f"stopped early {summary['stopped_early']}, wall {wall:.0f}s", flush=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    ref = results.get("a")
    print()
    print("| config                       | trial-epochs | of (a) | best accuracy | vs (a) best "
          "| stopped early | wall |")
    print("|------------------------------|-------------:|-------:|--------------:|------------:|--------------:|-----:|")
    for key, r in results.items():
        s = r["summary"]
        frac = f"{s['trial_epochs'] / ref['summary']['trial_epochs']:.2f}" if ref else "-"
        diff = f"{s['best_metric'] - ref['summary']['best_metric']:+.4f}" if ref else "-"
        print(f"| ({key}) {POLICIES[key][0]:<24} | {s['trial_epochs']:>12} | {frac:>6} | {s['best_metric']:>13.4f} | "
              f"{diff:>11} | {s['stopped_early']:>13} | {r['wall']:>3.0f}s |")

    if not ref:
        print("\n(a) was not run: no targets checked")
        return 0
    print("\ntargets:")
    ok = True
    a_ep, a_best = ref["summary"]["trial_epochs"], ref["summary"]["best_metric"]
    for key, name in (("c", "ASHA"), ("d", "AutoMode")):
        if key in results:
            s = results[key]["summary"]
            frac, diff = s["trial_epochs"] / a_ep, s["best_metric"] - a_best
            met = frac <= 1 / 3 and diff >= -0.01
            ok &= met
            print(f"  {name}: best within 0.01 of (a) ({diff:+.4f}) and <= 1/3 of (a)'s trial-epochs ({frac:.2f}): "
                  f"{'MET' if met else 'MISSED'}")
    if "b" in results:
        saved = 1 - results["b"]["summary"]["trial_epochs"] / a_ep
        met = saved >= 0.25
        ok &= met
        print(f"  median_stopping: saves >= 25 % of (a)'s trial-epochs ({saved:.0%} saved): "
              f"{'MET' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

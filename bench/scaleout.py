"""Scale-out overhead on one machine: two Ray nodes vs one, and data-parallel trials vs one worker (issue 8).

(a) The same 4-trial sweep (resnet18, crop 32, 2 epochs, a 90-image 3-class copy of the bundled sample, grid
    over 4 learning rates, max_concurrent_trials 2, tracking off) run by ``visionsweep run`` as a Ray client of
    * a two-node ``cluster.local.LocalCluster`` with 1 CPU per node (one trial per node), and
    * a one-node Ray with 2 CPUs (a ``LocalCluster`` with ``--head-cpus 2``; its worker node, which has 0 CPUs,
      is stopped before the runs, so the head is the only node).
    Same total CPUs, same trials; both clusters are up before the clock starts.
(b) A 1-trial job on the one-node 2-CPU Ray, the full bundled sample (320 training images), batch 32 in total:
    * 2 data-parallel workers (``visionsweep: {workers_per_node: 2, cpus_per_trial: C}``, 16 images per worker
      and step, gloo on CPU, 1 torch thread each), and
    * 1 worker (``cpus_per_trial: 2``, batch 32, 2 torch threads).
    ``C`` defaults to 0.95, not 1: the group's driver reserves 0.1 CPU besides its workers, so 2 x 1 + 0.1 does
    not fit on 2 CPUs (``--ddp-cpus 1`` tries it; the trial then waits for resources until ``--timeout``).

Reported: wall time of each ``visionsweep run`` (process start to exit), the sweep's own time line, trial
durations (``trials/*/status.json``), ``train_images_per_sec`` per epoch (``trials/*/metrics.jsonl``, summed over
a group's workers; the training part of the epoch only) and, for (a), on which node each trial ran (Ray state API).
On this 2-core machine both nodes share the same cores, so these numbers measure the cost of scaling out
(process start, object transfer, gloo all-reduce), not a speed-up.

    .venv/bin/python bench/scaleout.py [--epochs 2] [--ddp-epochs 2] [--ddp-cpus 0.95] [--only a|b] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine_info import describe  # noqa: E402

from cluster.local import MARKER_ENV, LocalCluster  # noqa: E402
from tests.conftest import small_sample  # noqa: E402

SAMPLE = ROOT / "trainers" / "sample_data" / "fashion_mnist"
nan = float("nan")
VISIONSWEEP = str(Path(sys.executable).parent / "visionsweep")
HEADER = ("$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json\ntype: automl\n"
          "task: image_classification\ncompute: local\ntarget_column_name: label\n")


def params(epochs: int, batch: int, extra: str = "") -> str:
    return (f"training_parameters:\n  model_name: resnet18\n  number_of_epochs: {epochs}\n"
            f"  training_batch_size: {batch}\n  validation_batch_size: 32\n  training_crop_size: 32\n"
            f"  validation_resize_size: 32\n  validation_crop_size: 32\n  early_stopping: 0\n  random_seed: 7\n"
            + extra)


def sweep_job(data: Path, epochs: int) -> str:
    return (HEADER + f"training_data:\n  path: {data}\n  type: mltable\n" + params(epochs, 16)
            + "limits:\n  max_trials: 4\n  max_concurrent_trials: 2\n"
            + "search_space:\n  - learning_rate: {type: choice, values: [0.001, 0.005, 0.01, 0.05]}\n"
            + "sweep:\n  sampling_algorithm: grid\n"
            + "visionsweep:\n  cpus_per_trial: 1\n  tracking: {enabled: false}\n")


def ddp_job(epochs: int, workers: int, cpus: float) -> str:
    batch = 32 // workers  # per worker: the same 32 images per optimiser step in total
    return (HEADER + f"training_data:\n  path: {SAMPLE / 'train'}\n  type: mltable\n"
            + params(epochs, batch, "  learning_rate: 0.01\n")
            + "limits:\n  max_trials: 1\n  max_concurrent_trials: 1\n"
            + f"visionsweep:\n  workers_per_node: {workers}\n  cpus_per_trial: {cpus:g}\n"
            + "  tracking: {enabled: false}\n")


def client_env(cluster: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", MARKER_ENV)}
    env.update(cluster.env())
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def trial_actors(cluster: LocalCluster) -> dict[str, set[str]]:
    """node_id -> ids of the Tune trial actors (``ImplicitFunc``) and Train workers it has hosted."""
    out: dict[str, set[str]] = {}
    try:
        rows = cluster.api("/api/v0/actors?limit=10000&detail=true", timeout=20)["data"]["result"]["result"]
    except Exception as e:  # a report, not a decision
        print(f"  (state API: {e})")
        return out
    for a in rows:
        if "ImplicitFunc" in a.get("class_name", "") or "RayTrainWorker" in a.get("class_name", ""):
            out.setdefault(a.get("node_id", "?"), set()).add(a["actor_id"])
    return out


def run(cluster: LocalCluster, job_text: str, work: Path, name: str, timeout: float) -> dict:
    """``visionsweep run`` of ``job_text`` against ``cluster``; wall time, sweep time, trials' metrics."""
    job = work / f"{name}.yml"
    job.write_text(job_text)
    out = work / "runs" / name
    before = trial_actors(cluster)
    launched = time.time()
    t0 = time.perf_counter()
    try:
        p = subprocess.run([VISIONSWEEP, "run", str(job), "--output", str(out)], env=client_env(cluster),
                           capture_output=True, text=True, timeout=timeout, cwd=work)
        rc, stdout = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout = "timeout", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - t0
    exited = time.time()
    after = trial_actors(cluster)
    m = re.search(r"^time: ([\d.]+)s", stdout, re.M)
    trials = []
    for t in sorted((out / "trials").iterdir()) if (out / "trials").is_dir() else []:
        st = json.loads((t / "status.json").read_text()) if (t / "status.json").exists() else {}
        metrics = [json.loads(x) for x in (t / "metrics.jsonl").read_text().splitlines()] \
            if (t / "metrics.jsonl").exists() else []
        dur = (st["ended"] - st["started"]) if st.get("ended") and st.get("started") else None
        trials.append(dict(id=t.name, status=st.get("status"), seconds=dur, started=st.get("started"),
                           ended=st.get("ended"),
                           rates=[m["train_images_per_sec"] for m in metrics],
                           workers=metrics[0].get("workers", 1) if metrics else None))
    placed = {node: len(ids - before.get(node, set())) for node, ids in after.items()}
    res = dict(name=name, rc=rc, wall=wall, sweep=float(m.group(1)) if m else None, trials=trials,
               placed={k: v for k, v in placed.items() if v}, timeline=timeline(trials, launched, exited))
    if rc != 0:
        res["tail"] = stdout[-3000:]
    return res


def timeline(trials: list[dict], launched: float, exited: float) -> dict | None:
    """Where the wall time went, from the trials' start/end times (``status.json``, written by the driver)."""
    spans = sorted((t["started"], t["ended"]) for t in trials if t.get("started") and t.get("ended"))
    if not spans:
        return None
    busy, cur_s, cur_e = 0.0, *spans[0]
    for s_, e_ in spans[1:]:  # union of the trials' running intervals
        if s_ > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s_, e_
        else:
            cur_e = max(cur_e, e_)
    busy += cur_e - cur_s
    first, last = spans[0][0], max(e for _, e in spans)
    return dict(first_start=first - launched, last_end=last - launched, exit=exited - launched,
                trial_s=sum(e - s_ for s_, e in spans), any_running=busy, between=(last - first) - busy)


def node_names(cluster: LocalCluster) -> dict[str, str]:
    try:
        return {n["node_id"]: ("head" if n.get("is_head_node") else "worker") for n in cluster.nodes()}
    except Exception:
        return {}


def describe_run(r: dict, nodes: dict[str, str]) -> None:
    print(f"  {r['name']}: rc {r['rc']}, wall {r['wall']:.1f}s, sweep time {r['sweep']}s", flush=True)
    for t in r["trials"]:
        secs = f"{t['seconds']:.1f}s" if t["seconds"] is not None else "?"
        print(f"    trial {t['id']} {t['status']}, {secs}, workers {t['workers']}, train img/s per epoch "
              + ", ".join(f"{x:.1f}" for x in t["rates"]))
    tl = r.get("timeline")
    if tl:
        print(f"    timeline (s after launch): first trial started {tl['first_start']:.1f}, last trial ended "
              f"{tl['last_end']:.1f}, process exited {tl['exit']:.1f}; trials ran {tl['trial_s']:.1f} trial-s; "
              f"no trial running for {tl['between']:.1f}s between the first start and the last end")
    if r["placed"]:
        print("    trial actors / Train workers started per node: "
              + ", ".join(f"{nodes.get(k, k[:8])} {v}" for k, v in r["placed"].items()))
    if r.get("tail"):
        print("    output tail:\n" + "\n".join("      " + ln for ln in r["tail"].splitlines()[-25:]))


def one_node(work: Path) -> LocalCluster:
    """A running Ray with one node of 2 CPUs (LocalCluster's worker node, with 0 CPUs, stopped)."""
    c = LocalCluster(work / "one-node", head_cpus=2, worker_cpus=0)
    c.start()
    c.stop_worker(force=False, wait_dead=True, timeout=90)
    return c


def summarize_a(results: dict[str, dict]) -> None:
    print()
    print("| setup | wall s (visionsweep run) | sweep s | launch -> 1st trial start s | 1st start -> last end s "
          "| none running in between s | last end -> exit s | trials completed | trial s (median) | "
          "train img/s per trial-epoch (median, epoch 1 / 2+) | trials per node |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, (r, nodes) in results.items():
        ok = sum(t["status"] == "completed" for t in r["trials"])
        secs = [t["seconds"] for t in r["trials"] if t["seconds"]]
        first = [t["rates"][0] for t in r["trials"] if t["rates"]]
        later = [x for t in r["trials"] for x in t["rates"][1:]]
        placed = ", ".join(f"{nodes.get(k, k[:8])} {v}" for k, v in r["placed"].items()) or "?"
        tl = r.get("timeline") or dict(first_start=nan, last_end=nan, exit=nan, between=nan)
        print(f"| {label} | {r['wall']:.1f} | {r['sweep'] or nan:.1f} | {tl['first_start']:.1f} | "
              f"{tl['last_end'] - tl['first_start']:.1f} | {tl['between']:.1f} | {tl['exit'] - tl['last_end']:.1f} | "
              f"{ok}/{len(r['trials'])} | "
              f"{statistics.median(secs) if secs else nan:.1f} | "
              f"{statistics.median(first) if first else nan:.1f} / "
              f"{statistics.median(later) if later else nan:.1f} | {placed} |")


def summarize_b(results: dict[str, dict], n_train: int) -> None:
    print()
    print("| setup | wall s (visionsweep run) | sweep s | launch -> trial start s | trial s | trial end -> exit s "
          "| rc | train img/s per epoch | epoch training s (median of epochs 2+) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for label, r in results.items():
        t = r["trials"][0] if r["trials"] else dict(seconds=None, rates=[])
        later = t["rates"][1:] or t["rates"]
        ep = f"{n_train / statistics.median(later):.2f}" if later else "n/a"
        tl = r.get("timeline") or dict(first_start=nan, last_end=nan, exit=nan)
        print(f"| {label} | {r['wall']:.1f} | {r['sweep'] if r['sweep'] is not None else nan:.1f} | "
              f"{tl['first_start']:.1f} | {t['seconds'] if t['seconds'] is not None else nan:.1f} | "
              f"{tl['exit'] - tl['last_end']:.1f} | {r['rc']} | "
              f"{', '.join(f'{x:.1f}' for x in t['rates']) or 'n/a'} | {ep} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="(a): epochs per trial")
    ap.add_argument("--ddp-epochs", type=int, default=2, help="(b): epochs of the one trial")
    ap.add_argument("--ddp-cpus", type=float, default=0.95, help="(b): cpus_per_trial of each of the 2 workers")
    ap.add_argument("--only", choices=["a", "b"], default=None)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per visionsweep run")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (run folders, cluster logs)")
    args = ap.parse_args()

    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC   load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {describe('torch', 'ray')}")
    work = Path(tempfile.mkdtemp(prefix="vs-scaleout-"))
    t_all = time.perf_counter()
    res_a: dict[str, tuple[dict, dict]] = {}
    res_b: dict[str, dict] = {}
    n_train = None
    try:
        data = small_sample(work / "small")
        if args.only in (None, "a", "b"):
            t0 = time.perf_counter()
            c = one_node(work)
            print(f"one-node Ray (2 CPUs) up in {time.perf_counter() - t0:.1f}s: {c.status()['nodes']}", flush=True)
            try:
                nodes = node_names(c)
                if args.only in (None, "a"):
                    r = run(c, sweep_job(data, args.epochs), work, "a-one-node", args.timeout)
                    describe_run(r, nodes)
                    res_a["one node, 2 CPUs"] = (r, nodes)
                if args.only in (None, "b"):
                    for label, workers, cpus in [("1 worker, cpus_per_trial 2", 1, 2.0),
                                                 (f"2 DDP workers, cpus_per_trial {args.ddp_cpus:g}", 2,
                                                  args.ddp_cpus)]:
                        r = run(c, ddp_job(args.ddp_epochs, workers, cpus), work, f"b-{workers}w", args.timeout)
                        describe_run(r, nodes)
                        res_b[label] = r
                        if n_train is None and (work / "runs" / r["name"] / "data" / "summary.json").exists():
                            n_train = json.loads((work / "runs" / r["name"] / "data" / "summary.json")
                                                 .read_text()).get("train_images")
            finally:
                c.stop()
        if args.only in (None, "a"):
            t0 = time.perf_counter()
            c = LocalCluster(work / "two-node", head_cpus=1, worker_cpus=1)
            c.start()
            print(f"two-node Ray (1 + 1 CPU) up in {time.perf_counter() - t0:.1f}s", flush=True)
            try:
                nodes = node_names(c)
                r = run(c, sweep_job(data, args.epochs), work, "a-two-node", args.timeout)
                describe_run(r, nodes)
                res_a["two nodes, 1 CPU each"] = (r, nodes)
            finally:
                c.stop()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if res_a:
        print(f"\n(a) 4-trial sweep, resnet18, crop 32, {args.epochs} epochs, 72 train / 18 validation images, "
              "2 trials at a time, 1 CPU per trial")
        summarize_a(res_a)
    if res_b:
        print(f"\n(b) 1 trial, resnet18, crop 32, {args.ddp_epochs} epochs, {n_train} train images, 32 images "
              "per step in total, one-node 2-CPU Ray")
        summarize_b(res_b, n_train or 320)
    print(f"\nscript wall time {time.perf_counter() - t_all:.0f}s. On this machine both nodes share the same "
          "2 cores: these numbers are the overhead of scaling out, not a speed-up.")
    print(f"done {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC, load average (1/5/15 min) "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

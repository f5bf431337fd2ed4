"""What a trial costs on this cluster, measured before an AutoMode sweep (``scheduler.budget`` plans with it).

One Ray task with a trial's resources (its CPUs and GPU; one worker's for a data-parallel trial) trains each model
AutoMode chose for two epochs of :data:`PROBE_STEPS` batches, at the largest and the smallest input size the plan may
pick, through a trial's own code: ``trainers.engine.train`` with the job's settings, data loaders and initial
weights. Epoch 1 warms up (lazy initialisation, allocator, cuDNN autotuning); epoch 2's training time gives the
seconds per training image; the time between the two evaluations, less that training and the checkpoint written in
between, the seconds per validation image; what the first epoch took beyond its training and evaluation, the model
build (weights, loaders). The task's round trip, less its own work, plus its imports is a trial's process start.
On CPU the probe trains batches of at most :data:`PROBE_BATCH_CPU` images (the seconds per image of a larger batch
are no higher there); on a GPU the trial's own batch size, since a small batch would leave it idle.

Why a Ray task and not the driver: under ``ray job submit`` the driver may run on a node without a GPU, or share its
CPUs with Ray's head processes; the task runs where a trial runs, on the device a trial gets, with the threads a
trial gets (``cpus_per_trial``), and its process exits afterwards (``max_calls=1``: a worker that touched CUDA would
keep its context, GPU memory a trial needs). On an embedded Ray it is the same task on this machine.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from scheduler.budget import Cost, ModelCost
from scheduler.resources import TrialResources
from trainers.data import PreparedData
from trainers.data.credentials import EnvCredentials
from trainers.data.images import open_image
from trainers.data.urls import is_remote
from trainers.launch import Group
from trainers.models.weights.sources import WeightsConfig

PROBE_STEPS = 2  # training batches per probe epoch
PROBE_BATCH_CPU = 8  # the most images a CPU probe trains per batch
PROBE_VALID_CPU = 16  # the most validation images a CPU probe evaluates
PROBE_TIMEOUT_S = 300.0  # the most the probe may wait and run (a GPU a cluster still has to add: unmeasured)
NATIVE_SAMPLE = 16  # training images whose size gives the data's own size
PROBE_RECORDS = 512  # the records sent to the probe (it cycles through them for a batch)


def native_size(data: PreparedData, n: int = NATIVE_SAMPLE) -> tuple[int, int] | None:
    """The median (short side, long side) of the first ``n`` training images, from their headers (prepare_data has
    read each of them once: local files, or this node's cache)."""
    sides = []
    for r in data.train[:n]:
        try:
            w, h = open_image(data.store.read(r.image_url), r.image_url).size
        except Exception:  # a trial reports an unreadable image with its own error
            continue
        sides.append((min(w, h), max(w, h)))
    if not sides:
        return None
    return int(statistics.median(s for s, _ in sides)), int(statistics.median(b for _, b in sides))


def trial_slots(res: TrialResources) -> int:
    """How many trials the cluster can run at once now: each node's CPUs and GPUs divided by what a trial (or a
    data-parallel trial's worker) reserves."""
    import ray

    g = res.group
    dp = g.workers > 1
    cpus, gpus = (g.cpus_per_worker, 1.0 if g.use_gpu else 0.0) if dp else (res.cpus, res.gpus)
    fit = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        n = int(have.get("CPU", 0) // cpus) if cpus > 0 else 10**6
        if gpus > 0:
            n = min(n, int(have.get("GPU", 0) // gpus + 1e-9))
        fit += n
    return max(1, fit // g.workers if dp else fit)


def measure(task: str, fixed: dict[str, Any], runs: list[tuple[str, int | None, dict[str, Any]]],
            data: PreparedData, weights: WeightsConfig, res: TrialResources, init_package: str | None = None,
            timeout_s: float = PROBE_TIMEOUT_S) -> Cost:
    """The cost of ``runs`` ((model, input size, sampled values), :func:`scheduler.automode.probe_runs`) on a
    trial's resources. Raises ``TimeoutError`` when the task has not finished within ``timeout_s`` (it is
    cancelled), or the task's error."""
    import ray

    g = res.group
    dp = g.workers > 1
    cpus = g.cpus_per_worker if dp else res.cpus
    gpus = (1.0 if g.use_gpu else 0.0) if dp else res.gpus
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1, max_retries=0)(_measure)
    few = dataclasses.replace(data, train=data.train[:PROBE_RECORDS], valid=data.valid[:PROBE_RECORDS])
    t = time.perf_counter()
    ref = remote.remote(task, fixed, runs, few, weights, cpus, g, init_package, EnvCredentials.from_environ())
    try:
        out = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(f"the cost probe did not finish within {timeout_s:.0f}s (no free "
                           f"{'GPU' if gpus else 'CPU'} for it, or a very slow model)") from None
    round_trip = time.perf_counter() - t
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in out["runs"]:
        by_model.setdefault(r["model_name"], []).append(r)
    models = tuple(ModelCost(name, tuple((r["size"], r["train_s"], r["valid_s"]) for r in rs),
                             build_s=max(r["build_s"] for r in rs), checkpoint_s=max(r["checkpoint_s"] for r in rs))
                   for name, rs in by_model.items())
    start = max(0.0, round_trip - out["elapsed_s"]) + out["import_s"]
    return Cost(models, start_s=start, workers=g.workers, probe_s=round_trip, device=out["device"])


def _cycle(records: list, n: int) -> list:
    return [records[i % len(records)] for i in range(n)]


def _measure(task: str, fixed: dict[str, Any], runs, data: PreparedData, weights: WeightsConfig, cpus: float,
             group: Group, init_package: str | None, credentials: EnvCredentials) -> dict[str, Any]:
    """The Ray task (see the module docstring)."""
    entered = time.perf_counter()
    import tempfile

    import torch

    from trainers.engine import train
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.weights.resolve import initial_weights
    from trainers.package.folder import fetch_package
    from trainers.tasks import make_task

    imported = time.perf_counter()
    credentials.apply()
    torch.set_num_threads(max(1, int(cpus)))
    on_gpu = torch.cuda.is_available()
    workers = group.engine_workers()  # one process: rank 0 of 1, with the trial's AMP and memory-format settings
    if init_package and is_remote(init_package):  # an earlier model on storage (checkpoint_run_id), as a trial does
        init_package = str(fetch_package(init_package, data.storage_options))
    out = []
    for model_name, size, config in runs:
        h = resolve_hyperparameters(task, fixed, {**config, "number_of_epochs": 2, "early_stopping": False,
                                                  "evaluation_frequency": 1, "gradient_accumulation_step": 1})
        if not on_gpu:
            h["training_batch_size"] = min(h["training_batch_size"], PROBE_BATCH_CPU)
            h["validation_batch_size"] = min(h["validation_batch_size"], PROBE_VALID_CPU)
        batch = h["training_batch_size"]
        n_valid = min(len(data.valid), h["validation_batch_size"])
        sub = dataclasses.replace(data, train=_cycle(data.train, batch * PROBE_STEPS), valid=data.valid[:n_valid])
        if not sub.store.stream:
            sub.store.materialize([r.image_url for r in (*sub.train, *sub.valid)])
        seen = (len(make_task(task, data.classes).train_dataset(h, sub)) // batch) * batch  # full batches only
        marks: list[tuple[float, float, float]] = []

        def report(m: dict[str, Any], save) -> None:
            at = time.perf_counter()
            written = 0.0
            if save is not None:
                with tempfile.TemporaryDirectory() as d:
                    save(d)
                written = time.perf_counter() - at
            ips = m.get("train_images_per_sec")  # the epoch's training alone, as the engine timed it
            marks.append((at, seen / ips if ips else None, written))

        started = time.perf_counter()
        init = init_package or initial_weights(h, task, weights)
        train(h, sub, report, weights=init, workers=workers)
        (t1, train1, ck1), (t2, train2, ck2) = marks[:2]
        if train1 is None or train2 is None:  # no training time reported: all of epoch 2 counts as training
            train1, train2 = (t1 - started), (t2 - t1) - ck1
        evaluated = len(sub.valid) + (len(sub.train) if h.get("log_training_metrics") else 0)
        valid_s = max(0.0, (t2 - t1) - ck1 - train2)
        out.append({"model_name": model_name, "size": size, "train_s": train2 / len(sub.train),
                    "valid_s": valid_s / max(1, evaluated),
                    "build_s": max(0.0, (t1 - started) - train1 - valid_s), "checkpoint_s": max(ck1, ck2)})
    return {"runs": out, "import_s": imported - entered, "elapsed_s": time.perf_counter() - entered,
            "device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({max(1, int(cpus))} thread(s))"}

"""The one training loop, for a trial in one process or in each worker of a data-parallel group
(SPEC §6.1, §6.4, §8.3, §11.1).

``train`` builds the model and loaders from resolved hyperparameters, trains for ``number_of_epochs``,
evaluates every ``evaluation_frequency`` epochs (and after the last one), and hands each evaluation's
metrics to ``report`` together with a function that writes a model package when a checkpoint is due:
at every improvement of the primary metric (so ``best/`` is the evaluation the leaderboard reports), and
also every ``checkpoint_frequency`` epochs when that is set (§6.1; at the first evaluation at or after each
multiple, since checkpoints go with evaluations). The package holds that evaluation's per-image validation
outputs too (``trainers.validation_outputs``): the run report draws the best model's predictions from them.
In-trial early stopping (``early_stopping``, ``_patience``, ``_delay``) counts evaluations.

What a model, a sample, a batch's loss and an evaluation are is the task's business (``trainers.tasks``:
classification, detection, segmentation): the loop asks the task and never branches on it.

Data parallelism (``trainers.launch`` starts the workers; :class:`Workers` says which one this is):
each worker trains on its shard of every epoch (a ``DistributedSampler`` over one seeded permutation,
so the union of the workers' batches is the batch a single process would take), gradients are averaged
by DDP, validation metrics are computed over the *whole* validation set (each worker predicts its
shard, the predictions are gathered), and every worker takes the same early-stopping decision. BatchNorm
layers normalise with the statistics of the whole global batch (``trainers.batchnorm``; ``Workers.sync_batchnorm``
off: each worker's own), and each sample's augmentation is drawn from a seed of (trial seed, epoch, sample)
(``trainers.data.draws``), so a group takes the steps a single process takes with the global batch. Only
rank 0 writes checkpoints. On CUDA the loop uses mixed precision (bf16 where supported, else fp16
with a gradient scaler) and ``channels_last``; ``Workers.amp`` / ``channels_last`` turn them off.

What each evaluation reports (§14): the task's validation metrics, ``train_loss`` (the epoch's
optimisation loss), ``learning_rate``, throughput and ``trainer_pid`` (the process that trained it, rank 0's);
``validation_loss`` only with ``log_validation_loss`` (the default; classification computes one, detectors do not);
and, with ``log_training_metrics``, the task's metrics over the training images too, under ``train_<metric>``
(one more pass over the training set per evaluation, without augmentation: off by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset

from trainers.batchnorm import sync_batchnorm
from trainers.data import PreparedData
from trainers.data.draws import SeededSampler
from trainers.errors import TrainingError
from trainers.models.weights.initial import InitialWeights
from trainers.package import save_package
from trainers.tasks import Task, make_task
from trainers.validation_outputs import write_outputs
from trainers.workers import SINGLE, Runtime, Workers

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Optional[Callable[[str], None]]], None]


def make_optimizer(params, h: dict[str, Any]) -> torch.optim.Optimizer:
    lr, wd = h["learning_rate"], h["weight_decay"]
    if h["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=h["momentum"], weight_decay=wd,
                               nesterov=h["nesterov"] and h["momentum"] > 0)
    cls = torch.optim.Adam if h["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(h["beta1"], h["beta2"]), weight_decay=wd, amsgrad=h["ams_gradient"])


def lr_factor(h: dict[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the initial learning rate at optimiser step ``s`` (stepped once per update)."""
    total = max(1, h["number_of_epochs"] * steps_per_epoch)
    kind = h["learning_rate_scheduler"]
    if kind == "warmup_cosine":
        warmup = h["warmup_cosine_lr_warmup_epochs"] * steps_per_epoch
        cycles = h["warmup_cosine_lr_cycles"]

        def f(s: int) -> float:
            if s < warmup:
                return (s + 1) / warmup
            progress = (s - warmup) / max(1, total - warmup)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))
        return f
    if kind == "step":
        size, gamma = h["step_lr_step_size"], h["step_lr_gamma"]
        return lambda s: gamma ** ((s // steps_per_epoch) // size)
    return lambda s: 1.0


def _workers(h: dict[str, Any]) -> int:
    n = h.get("number_of_workers")
    return 0 if n is None else n


def make_loaders(h: dict[str, Any], data: PreparedData, task: Task, workers: Workers = SINGLE):
    """Training loader over this worker's shard, each sample augmented by its own seed (``trainers.data.draws``);
    validation loader over this worker's slice (rank::world)."""
    seed = h.get("random_seed") or 0
    train_ds = task.train_dataset(h, data)
    valid_ds = task.valid_dataset(h, data)
    valid_ds = Subset(valid_ds, range(workers.rank, len(valid_ds), workers.world))
    nw = _workers(h)
    common = dict(num_workers=nw, persistent_workers=nw > 0, pin_memory=torch.cuda.is_available(),
                  collate_fn=task.collate)
    batch = h["training_batch_size"]
    drop_last = len(train_ds) > batch * workers.world
    sampler = SeededSampler(train_ds, num_replicas=workers.world, rank=workers.rank, shuffle=True, seed=seed,
                            drop_last=drop_last)
    train = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=drop_last, **common)
    valid = DataLoader(valid_ds, batch_size=h["validation_batch_size"], shuffle=False, **common)
    return train, valid


def training_metrics_loader(h: dict[str, Any], data: PreparedData, task: Task, workers: Workers = SINGLE):
    """``log_training_metrics``: the training images as the task evaluates them (validation transforms,
    this worker's slice rank::world), or None when the trial does not log training metrics."""
    if not h.get("log_training_metrics"):
        return None
    ds = task.valid_dataset(h, dataclasses.replace(data, valid=data.train))
    ds = Subset(ds, range(workers.rank, len(ds), workers.world))
    nw = _workers(h)
    return DataLoader(ds, batch_size=h["validation_batch_size"], shuffle=False, num_workers=nw,
                      persistent_workers=nw > 0, pin_memory=torch.cuda.is_available(), collate_fn=task.collate)


# what an evaluation of the training images adds: its scalar metrics, named train_<metric>
_NOT_TRAINING_METRICS = {"validation_loss", "validation_images"}


def evaluation_metrics(task: Task, net, valid_loader, train_loader, rt: Runtime, h: dict[str, Any]) -> dict[str, Any]:
    """One evaluation's metrics as ``log_validation_loss`` and ``log_training_metrics`` ask (§14); the task's
    ``validation_outputs`` stay those of the validation images."""
    m = task.evaluate(net, valid_loader, rt, h)
    if not h.get("log_validation_loss", True):
        m.pop("validation_loss", None)
    if train_loader is not None:
        kept = task.validation_outputs
        t = task.evaluate(net, train_loader, rt, h)
        task.validation_outputs = kept
        m.update({f"train_{k}": v for k, v in t.items() if k not in _NOT_TRAINING_METRICS
                  and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return m


TRAINER_STATE = "trainer_state.pt"


@dataclass(frozen=True)
class LoopSettings:
    """The hyperparameters the loop itself reads (the task and the optimiser read the rest of ``h``)."""

    epochs: int
    eval_every: int  # evaluation_frequency, in epochs
    accumulate: int  # gradient_accumulation_step
    early_stopping: bool
    patience: int  # evaluations without improvement, counted after the delay (§6.1)
    delay: int  # evaluations before improvement is tracked
    checkpoint_every: int | None  # checkpoint_frequency, in epochs (§6.1); None: at improvements only
    seed: int

    @classmethod
    def of(cls, h: dict[str, Any]) -> "LoopSettings":
        return cls(h["number_of_epochs"], h["evaluation_frequency"], h["gradient_accumulation_step"],
                   bool(h["early_stopping"]), h["early_stopping_patience"], h["early_stopping_delay"],
                   h.get("checkpoint_frequency"), h.get("random_seed") or 0)

    def periodic_checkpoint_due(self, epoch: int, last: int) -> bool:
        """A checkpoint every ``checkpoint_every`` epochs, at the first evaluation at or after each multiple
        (checkpoints go with evaluations); ``last``: the epoch of the previous periodic one."""
        return bool(self.checkpoint_every) and epoch // self.checkpoint_every > last // self.checkpoint_every


def start_from(task: Task, h: dict[str, Any], weights: Any,
               resume_from: str | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(what the model is built from, its architecture choices, the provenance of its initial weights).

    A checkpoint (``resume_from``) or a model package (``checkpoint_run_id``) is rebuilt with the architecture
    it recorded; the provenance a checkpoint carries stays that of the trial's first start."""
    import json


    package = resume_from or (weights if isinstance(weights, str) and Path(weights).is_dir() else None)
    if package:
        meta = _read_json(Path(package) / "model.json")
        origin = _read_json(Path(package) / "training_config.json").get("initial_weights") if resume_from else None
        provenance = origin or {"source": "package", "location": str(package), "file": "model.safetensors",
                                "model_name": meta.get("model_name", h["model_name"])}
        return (str(Path(package) / "model.safetensors"), meta.get("architecture", {}),
                json.loads(json.dumps(provenance)))
    if isinstance(weights, InitialWeights):
        provenance = weights.provenance()
    elif weights:
        provenance = {"source": "explicit", "location": str(weights), "model_name": h["model_name"]}
    else:
        provenance = {"source": "none", "model_name": h["model_name"]}
    return weights, task.architecture(h, weights), provenance


def _read_json(p: Path) -> dict[str, Any]:
    import json

    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def train(h: dict[str, Any], data: PreparedData, report: Report, *, weights: Any = None,
          device: str | None = None, resume_from: str | None = None,
          workers: Workers = SINGLE, leave: Any = None, steps: Any = None) -> dict[str, Any]:
    """Train one trial with resolved hyperparameters ``h``; returns a summary of the run.

    ``weights``: what to start from: an ``InitialWeights`` (published weights found by ``trainers.models.weights``), a
    weights file, or a model package folder (an earlier run's model for incremental training); tensors whose
    shape differs (a new head) are re-initialised; None: random initialisation. ``resume_from``: a checkpoint
    folder written by this loop; training goes on after the epoch it was taken at, with the optimiser,
    schedule and early-stopping state it had.
    ``workers``: this process's place in a data-parallel group (see the module docstring); every
    worker calls ``report`` with the same metrics, and only rank 0 gets a checkpoint writer.
    The first evaluation of a fresh start also reports ``initial_weights`` (where the weights came from).
    ``leave`` (a ``trainers.preemption.LeaveNotice``) and ``steps`` (its ``StepStore``): a node told to leave
    stops the trial at the next optimiser step with a step checkpoint in ``steps``, and a restarted trial goes on
    from that step when it is newer than ``resume_from`` (see ``trainers.preemption``).
    """
    task = make_task(data.task, data.classes)
    task.check(h)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loop = LoopSettings.of(h)
    torch.manual_seed(loop.seed)
    init, architecture, provenance = start_from(task, h, weights, resume_from)
    model = task.build_model(h, init, architecture)
    task.freeze(model, h)
    rt = Runtime.of(dev, workers, task.channels_last_ok)
    model.to(dev, memory_format=rt.memory_format)
    scaler = torch.amp.GradScaler(dev.type, enabled=rt.amp == torch.float16)
    train_loader, valid_loader = make_loaders(h, data, task, workers)
    train_eval_loader = training_metrics_loader(h, data, task, workers)
    task.prepare(h, data, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, h)
    accum = loop.accumulate
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accum))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(h, steps_per_epoch))

    primary = task.primary_metric
    epochs, eval_every = loop.epochs, loop.eval_every
    best, best_epoch, stale, n_evals, start, last_periodic = -math.inf, 0, 0, 0, 1, 0
    resumed_from = None
    if resume_from:
        st = _load_checkpoint(Path(resume_from), model, opt, sched, scaler, dev)
        best, best_epoch, stale, n_evals, start = (st["best"], st["best_epoch"], st["stale"], st["n_evals"],
                                                   st["epoch"] + 1)
        last_periodic = st.get("last_periodic", 0)
        resumed_from = st["epoch"]
        log.info("resumed after epoch %d (best %s %.4f)", st["epoch"], primary, best)
    step_from = _step_checkpoint(steps, resumed_from, model, opt, sched, scaler, dev)
    if step_from is not None:
        best, best_epoch, stale, n_evals, start = (step_from["best"], step_from["best_epoch"], step_from["stale"],
                                                   step_from["n_evals"], step_from["epoch"])
        last_periodic = step_from.get("last_periodic", 0)
        resumed_from = step_from["epoch"] - 1
    global_step = sched.last_epoch  # optimiser steps taken (LambdaLR steps once per update)
    spot_workers = _spot_workers(leave, workers, dev)
    net = model
    if workers.distributed:  # after loading: DDP broadcasts rank 0's weights to the others
        from torch.nn.parallel import DistributedDataParallel

        if workers.sync_batchnorm:  # in place: the parameters, and so the optimiser's, stay the same tensors
            n = sync_batchnorm(model, dev)
            log.info("SyncBatchNorm: %d BatchNorm layers use the statistics of all %d workers", n, workers.world)
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    for epoch in range(start, epochs + 1):
        net.train()
        train_loader.sampler.set_epoch(epoch)
        n_batches, done = len(train_loader), 0
        t0 = time.perf_counter()
        totals = torch.zeros(2, device=dev)  # loss sum, images: summed on the device, read once per epoch
        if step_from is not None and epoch == step_from["epoch"]:  # the batches done before the node left
            done = step_from["batches"]
            train_loader.sampler.skip = done * h["training_batch_size"]
            if workers.rank == 0:  # the whole group's partial sums, counted once
                totals += torch.tensor([step_from["loss_sum"], step_from["images"]], device=dev)
            step_from["resumed_after_s"] = time.time() - step_from["saved_at"]
            log.info("resumed mid-epoch %d after batch %d of %d (optimiser step %d), %.1f s after the step "
                     "checkpoint was written", epoch, done, n_batches, global_step, step_from["resumed_after_s"])
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader, done):
            last = (i + 1) % accum == 0 or i + 1 == n_batches
            sync = net.no_sync() if workers.distributed and not last else contextlib.nullcontext()
            with sync:
                loss, n_images = task.loss(net, batch, rt)
                scaler.scale(loss / accum).backward()
            totals[0] += loss.detach() * n_images
            totals[1] += n_images
            if last:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                global_step += 1
                if leave is not None and _leaving(leave, workers, dev):
                    state = {"epoch": epoch, "batches": i + 1, "best": best, "best_epoch": best_epoch,
                             "stale": stale, "n_evals": n_evals, "last_periodic": last_periodic,
                             "global_step": global_step, "noticed_at": getattr(leave, "noticed_at", None)}
                    _save_step(steps, state, workers.sum(totals.clone()), model, opt, sched, scaler, data, h,
                               architecture, provenance, workers)
                    from trainers.preemption import Preempted

                    raise Preempted(f"the node is leaving: stopped at optimiser step {global_step} (epoch {epoch}, "
                                    f"batch {i + 1} of {n_batches}) with a step checkpoint; the trial goes on "
                                    "from it elsewhere")
        loss_sum, seen = workers.sum(totals).tolist()
        train_loss = loss_sum / max(1.0, seen)
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {epoch} of {h['model_name']}; "
                                f"try a lower learning_rate (now {h['learning_rate']:g})")
        elapsed = time.perf_counter() - t0
        if epoch % eval_every and epoch != epochs:
            continue
        n_evals += 1
        m = evaluation_metrics(task, net, valid_loader, train_eval_loader, rt, h)
        m.update(epoch=epoch, train_loss=train_loss, learning_rate=opt.param_groups[0]["lr"],
                 train_images_per_sec=seen / elapsed if elapsed > 0 else 0.0,
                 trainer_pid=os.getpid())  # the process that trained it (rank 0's): what a fault test kills
        if workers.distributed:
            m["workers"] = workers.world
        if spot_workers is not None:  # how many of the workers run on spot nodes (`visionsweep status` shows it)
            m["spot_workers"] = spot_workers
        if resumed_from is not None:
            m["resumed_from_epoch"] = resumed_from
        if step_from is not None:  # what the evaluation after a mid-epoch resume says about it (issue 30)
            m.update(resumed_from_step=step_from["global_step"], resumed_from_batch=step_from["batches"],
                     resumed_after_s=step_from["resumed_after_s"])
        value = m.get(primary)  # absent with validation_metric_type: none: the latest evaluation counts as best
        improved = value is None or value > best
        if value is None:
            value = best
        if improved:
            best, best_epoch = value, epoch
        # In-trial early stopping counts evaluations after the delay (§6.1).
        if loop.early_stopping and n_evals > loop.delay:
            stale = 0 if improved else stale + 1
        # A checkpoint at every improvement, so that the exported best/ package is the evaluation the
        # leaderboard reports; checkpoint_frequency adds one every that many epochs (a resume goes on from the latest).
        periodic = loop.periodic_checkpoint_due(epoch, last_periodic)
        if periodic:
            last_periodic = epoch
        saver = None
        if (improved or periodic) and workers.rank == 0:
            state = {"epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale, "n_evals": n_evals,
                     "last_periodic": last_periodic}

            def saver(path: str, _m=dict(m), _state=state, _outputs=task.validation_outputs) -> None:
                _write_checkpoint(path, _m, _state, model, opt, sched, scaler, data, h, architecture, provenance)
                if _outputs is not None:  # what this evaluation predicted: the report draws it (no second pass)
                    write_outputs(path, _outputs, [r.image_url for r in data.valid], _state["epoch"], data.classes,
                                  data.task, task.report_predictions)
        if n_evals == 1 and resumed_from is None:
            m["initial_weights"] = provenance  # where the trial's weights came from (run folder, MLflow params)
        report(m, saver)
        if step_from is not None:  # reported past it: a later restart goes on from this evaluation's checkpoint
            step_from = None
            if workers.rank == 0 and steps is not None:
                steps.clear()
        if loop.early_stopping and n_evals > loop.delay:
            if stale >= loop.patience:
                log.info("early stopping after epoch %d (best %s %.4f at epoch %d)", epoch, primary, best, best_epoch)
                return {"best": best, "best_epoch": best_epoch, "epochs": epoch, "early_stopped": True}
    return {"best": best, "best_epoch": best_epoch, "epochs": epochs, "early_stopped": False}


def _write_checkpoint(path: str, metrics: dict[str, Any], state: dict[str, Any], model, opt, sched, scaler,
                      data: PreparedData, h: dict[str, Any], architecture, provenance) -> None:
    """A checkpoint folder: the model as a package, and the loop's ``state`` with the optimiser, scheduler and
    gradient scaler (an evaluation's, or a step checkpoint's)."""
    save_package(path, model=model, task=data.task, classes=data.classes, hyperparameters=h, metrics=metrics,
                 architecture=architecture, initial_weights=provenance)
    torch.save({**state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict()}, Path(path) / TRAINER_STATE)


def _load_checkpoint(folder: Path, model, opt, sched, scaler, dev: torch.device,
                     st: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`_write_checkpoint` wrote, loaded into the model, optimiser, scheduler and scaler; its state
    (``st``: that state, already read by the caller)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if st is None:
        st = torch.load(folder / TRAINER_STATE, map_location=dev, weights_only=True)
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if "scaler" in st:
        scaler.load_state_dict(st["scaler"])
    return st


def _spot_workers(leave: Any, workers: Workers, dev: torch.device) -> int | None:
    """Workers of the group on spot nodes (``cluster.capacity``; one all-reduce per start in a group); None outside
    Ray."""
    if leave is None or getattr(leave, "spot", None) is None:
        return None
    if not workers.distributed:
        return int(leave.spot)
    return int(workers.sum(torch.tensor([1.0 if leave.spot else 0.0], device=dev)).item())


def _leaving(leave: Any, workers: Workers, dev: torch.device) -> bool:
    """Whether the trial stops at this step: its node is leaving; in a group, any worker's (one all-reduce of a
    flag, so that every worker stops at the same step; a single worker reads its flag, no tensor)."""
    if not workers.distributed:
        return leave.is_set()
    return bool(workers.sum(torch.tensor([1.0 if leave.is_set() else 0.0], device=dev)).item() > 0)


def _save_step(steps: Any, state: dict[str, Any], totals: torch.Tensor, model, opt, sched, scaler,
               data: PreparedData, h: dict[str, Any], architecture, provenance, workers: Workers) -> None:
    """Rank 0 writes the step checkpoint (the model as a package, the loop's state, the group's partial loss sums);
    every worker waits for it before it stops."""
    import tempfile

    if workers.rank == 0 and steps is not None:
        with tempfile.TemporaryDirectory(prefix="visionsweep-step-") as tmp:
            loss_sum, images = totals.tolist()
            _write_checkpoint(tmp, {}, {**state, "loss_sum": loss_sum, "images": images, "saved_at": time.time()},
                              model, opt, sched, scaler, data, h, architecture, provenance)
            steps.save(Path(tmp))
        log.warning("step checkpoint written at optimiser step %d (epoch %d, batch %d)", state["global_step"],
                    state["epoch"], state["batches"])
    workers.sum(torch.zeros(1, device=totals.device))  # a barrier: no worker stops before it is written


def _step_checkpoint(steps: Any, resumed_from: int | None, model, opt, sched, scaler,
                     dev: torch.device) -> dict[str, Any] | None:
    """The trial's step checkpoint loaded into the model, optimiser, scheduler and scaler, when there is one newer
    than the checkpoint the trial resumed from (``resumed_from``: its epoch; None: a fresh start); its state, else
    None. An older one (the trial reported past it before this restart) is left alone."""
    import tempfile

    if steps is None:
        return None
    with tempfile.TemporaryDirectory(prefix="visionsweep-step-") as tmp:
        got = steps.fetch(Path(tmp) / "step")
        if got is None:
            return None
        st = torch.load(got / TRAINER_STATE, map_location=dev, weights_only=True)
        if st["epoch"] <= (resumed_from or 0):
            return None
        _load_checkpoint(got, model, opt, sched, scaler, dev, st)
    log.info("step checkpoint found: epoch %d, batch %d, optimiser step %d", st["epoch"], st["batches"],
             st["global_step"])
    return st

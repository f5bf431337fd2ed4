"""The one training loop, for a trial in one process or in each worker of a data-parallel group (SPEC §6.1, §6.4, §8.3, §11.1).

``train`` builds the model and loaders from resolved hyperparameters, trains for ``number_of_epochs``,
evaluates every ``evaluation_frequency`` epochs (and after the last one), and hands each evaluation's
metrics to ``report`` together with a function that writes a model package when a checkpoint is due:
at every improvement of the primary metric, or every ``checkpoint_frequency`` evaluations when set.
In-trial early stopping (``early_stopping``, ``_patience``, ``_delay``) counts evaluations.

Data parallelism (``trainers.launch`` starts the workers; :class:`Workers` says which one this is):
each worker trains on its shard of every epoch (a ``DistributedSampler`` over one seeded permutation,
so the union of the workers' batches is the batch a single process would take), gradients are averaged
by DDP, validation metrics are computed over the *whole* validation set (each worker predicts its
shard, the predictions are gathered), and every worker takes the same early-stopping decision. Only
rank 0 writes checkpoints. On CUDA the loop uses mixed precision (bf16 where supported, else fp16
with a gradient scaler) and ``channels_last``; ``Workers.amp`` / ``channels_last`` turn them off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from trainers.data import PreparedData
from trainers.data.datasets import ImageDataset
from trainers.errors import VisionsweepError
from trainers.models import build_model, freeze_layers, get_entry
from trainers.package import save_package
from trainers.tasks import ClassificationTask, make_task
from trainers.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Optional[Callable[[str], None]]], None]


class TrainingError(VisionsweepError):
    """Training cannot go on (a non-finite loss, an invalid setting for the chosen model)."""


@dataclass(frozen=True)
class Workers:
    """Where this copy of the loop runs: its rank among ``world`` workers, and the CUDA speed-ups.

    ``world == 1`` is a plain single-process trial; otherwise ``torch.distributed`` is initialised
    (Ray Train does it) and the loop wraps the model in DDP.
    """

    rank: int = 0
    world: int = 1
    amp: bool = True  # autocast (bf16 / fp16) on CUDA
    channels_last: bool = True  # NHWC memory format on CUDA

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t


SINGLE = Workers()


def _amp_dtype(dev: torch.device, workers: Workers) -> torch.dtype | None:
    if dev.type != "cuda" or not workers.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def make_loaders(h: dict[str, Any], data: PreparedData, task: ClassificationTask, workers: Workers = SINGLE):
    """Training loader over this worker's shard; validation loader over this worker's slice (rank::world)."""
    seed = h.get("random_seed") or 0
    train_ds = ImageDataset(data.train, task, train_transform(h["training_crop_size"]), data.store)
    valid_ds = ImageDataset(data.valid, task, eval_transform(h["validation_resize_size"], h["validation_crop_size"]),
                            data.store)
    valid_ds = Subset(valid_ds, range(workers.rank, len(valid_ds), workers.world))
    nw = _workers(h)
    common = dict(num_workers=nw, persistent_workers=nw > 0, pin_memory=torch.cuda.is_available())
    batch = h["training_batch_size"]
    drop_last = len(train_ds) > batch * workers.world
    sampler = DistributedSampler(train_ds, num_replicas=workers.world, rank=workers.rank, shuffle=True, seed=seed,
                                 drop_last=drop_last)
    train = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=drop_last, **common)
    valid = DataLoader(valid_ds, batch_size=h["validation_batch_size"], shuffle=False, **common)
    return train, valid


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: ClassificationTask, loss_fn: nn.Module,
             device: torch.device, workers: Workers = SINGLE, amp: torch.dtype | None = None,
             memory_format=torch.contiguous_format) -> dict[str, float]:
    """Metrics over the whole validation set: each worker predicts its slice, rank order restores the set."""
    model.eval()
    probs, targets, loss_sum, n = [], [], torch.zeros((), device=device), 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += loss_fn(logits, y) * len(x)
        n += len(x)
        probs.append(task.probabilities(logits))
        targets.append(y)
    mine = (torch.cat(probs).cpu() if probs else None, torch.cat(targets).cpu() if targets else None,
            float(loss_sum), n)
    parts = [p for p in workers.all_gather(mine) if p[3]]
    all_probs = _interleave([p[0] for p in parts])
    all_targets = _interleave([p[1] for p in parts])
    out = task.metrics(task.targets_array(all_targets), all_probs.numpy())
    out["validation_loss"] = sum(p[2] for p in parts) / max(1, sum(p[3] for p in parts))
    out["validation_images"] = sum(p[3] for p in parts)
    return out


def _interleave(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Undo the rank::world split: row i of the set is row i // world of chunk i % world."""
    if len(chunks) == 1:
        return chunks[0]
    total = sum(len(c) for c in chunks)
    out = chunks[0].new_empty((total, *chunks[0].shape[1:]))
    for r, c in enumerate(chunks):
        out[r::len(chunks)] = c
    return out


def _autocast(dev: torch.device, dtype: torch.dtype | None):
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def check_model_settings(h: dict[str, Any]) -> None:
    if get_entry(h["model_name"]).fixed_input and h["training_crop_size"] != h["validation_crop_size"]:
        raise TrainingError(f"{h['model_name']} needs training_crop_size == validation_crop_size (§6.4), "
                            f"but got {h['training_crop_size']} and {h['validation_crop_size']}")
    if h["validation_resize_size"] < h["validation_crop_size"]:
        raise TrainingError(f"validation_resize_size ({h['validation_resize_size']}) must be >= "
                            f"validation_crop_size ({h['validation_crop_size']})")


TRAINER_STATE = "trainer_state.pt"


def train(h: dict[str, Any], data: PreparedData, report: Report, *, weights: str | None = None,
          download_weights: bool = False, device: str | None = None, resume_from: str | None = None,
          workers: Workers = SINGLE) -> dict[str, Any]:
    """Train one trial with resolved hyperparameters ``h``; returns a summary of the run.

    ``weights``: a weights file or a model package folder to start from (pretrained weights, or an
    earlier run's model for incremental training); tensors whose shape differs (a new head) are
    re-initialised. ``resume_from``: a checkpoint folder written by this loop; training goes on after
    the epoch it was taken at, with the optimiser, schedule and early-stopping state it had.
    ``workers``: this process's place in a data-parallel group (see the module docstring); every
    worker calls ``report`` with the same metrics, and only rank 0 gets a checkpoint writer.
    """
    check_model_settings(h)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(h.get("random_seed") or 0)
    task = make_task(data.task, data.classes)
    if weights and Path(weights).is_dir():
        weights = str(Path(weights) / "model.safetensors")
    model = build_model(h["model_name"], len(data.classes), h["training_crop_size"], weights, download_weights)
    freeze_layers(model, h["model_name"], h.get("layers_to_freeze"))
    fmt = torch.channels_last if dev.type == "cuda" and workers.channels_last else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    amp = _amp_dtype(dev, workers)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
    train_loader, valid_loader = make_loaders(h, data, task, workers)
    weights_t = task.class_weights([r.label for r in data.train], h["weighted_loss"])
    loss_fn = task.loss_fn(None if weights_t is None else weights_t.to(dev))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, h)
    accum = h["gradient_accumulation_step"]
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accum))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(h, steps_per_epoch))

    primary = task.primary_metric
    epochs, eval_every = h["number_of_epochs"], h["evaluation_frequency"]
    best, best_epoch, stale, n_evals, start = -math.inf, 0, 0, 0, 1
    resumed_from = None
    if resume_from:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(resume_from) / "model.safetensors")))
        st = torch.load(Path(resume_from) / TRAINER_STATE, map_location=dev, weights_only=True)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if "scaler" in st:
            scaler.load_state_dict(st["scaler"])
        best, best_epoch, stale, n_evals, start = st["best"], st["best_epoch"], st["stale"], st["n_evals"], st["epoch"] + 1
        resumed_from = st["epoch"]
        log.info("resumed after epoch %d (best %s %.4f)", st["epoch"], primary, best)
    net = model
    if workers.distributed:  # after loading: DDP broadcasts rank 0's weights to the others
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    for epoch in range(start, epochs + 1):
        net.train()
        train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        totals = torch.zeros(2, device=dev)  # loss sum, images: summed on the device, read once per epoch
        opt.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(train_loader):
            x = x.to(dev, non_blocking=True, memory_format=fmt)
            y = y.to(dev, non_blocking=True)
            last = (i + 1) % accum == 0 or i + 1 == len(train_loader)
            sync = net.no_sync() if workers.distributed and not last else contextlib.nullcontext()
            with sync:
                with _autocast(dev, amp):
                    loss = loss_fn(net(x).float(), y)
                scaler.scale(loss / accum).backward()
            if last:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            totals[0] += loss.detach() * len(x)
            totals[1] += len(x)
        loss_sum, seen = workers.sum(totals).tolist()
        train_loss = loss_sum / max(1.0, seen)
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {epoch} of {h['model_name']}; "
                                f"try a lower learning_rate (now {h['learning_rate']:g})")
        elapsed = time.perf_counter() - t0
        if epoch % eval_every and epoch != epochs:
            continue
        n_evals += 1
        m = evaluate(net, valid_loader, task, loss_fn, dev, workers, amp, fmt)
        m.update(epoch=epoch, train_loss=train_loss, learning_rate=opt.param_groups[0]["lr"],
                 train_images_per_sec=seen / elapsed if elapsed > 0 else 0.0)
        if workers.distributed:
            m["workers"] = workers.world
        if resumed_from is not None:
            m["resumed_from_epoch"] = resumed_from
        value = m[primary]
        improved = value > best
        if improved:
            best, best_epoch = value, epoch
        # In-trial early stopping counts evaluations after the delay (§6.1).
        if h["early_stopping"] and n_evals > h["early_stopping_delay"]:
            stale = 0 if improved else stale + 1
        cf = h.get("checkpoint_frequency")
        due = (n_evals % cf == 0) if cf else improved
        saver = None
        if due and workers.rank == 0:
            state = {"epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale, "n_evals": n_evals}

            def saver(path: str, _m=dict(m), _state=state) -> None:
                save_package(path, model=model, task=data.task, classes=data.classes, hyperparameters=h, metrics=_m)
                torch.save({**_state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "scaler": scaler.state_dict()}, Path(path) / TRAINER_STATE)
        report(m, saver)
        if h["early_stopping"] and n_evals > h["early_stopping_delay"]:
            if stale >= h["early_stopping_patience"]:
                log.info("early stopping after epoch %d (best %s %.4f at epoch %d)", epoch, primary, best, best_epoch)
                return {"best": best, "best_epoch": best_epoch, "epochs": epoch, "early_stopped": True}
    return {"best": best, "best_epoch": best_epoch, "epochs": epochs, "early_stopped": False}

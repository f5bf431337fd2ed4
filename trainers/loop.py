"""The classification training loop: one trial, one process (SPEC §6.1, §6.4, §8.3).

``train`` builds the model and loaders from resolved hyperparameters, trains for ``number_of_epochs``,
evaluates every ``evaluation_frequency`` epochs (and after the last one), and hands each evaluation's
metrics to ``report`` together with a function that writes a model package when a checkpoint is due:
at every improvement of the primary metric, or every ``checkpoint_frequency`` evaluations when set.
In-trial early stopping (``early_stopping``, ``_patience``, ``_delay``) counts evaluations.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainers.data import PreparedData, Record, read_image
from trainers.errors import VisionsweepError
from trainers.models import build_model, freeze_layers, get_entry
from trainers.package import save_package
from trainers.tasks import ClassificationTask, make_task
from trainers.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Optional[Callable[[str], None]]], None]


class TrainingError(VisionsweepError):
    """Training cannot go on (a non-finite loss, an invalid setting for the chosen model)."""


class ImageDataset(Dataset):
    """Records -> (image tensor, target); images are read through fsspec when an item is asked for."""

    def __init__(self, records: Sequence[Record], task: ClassificationTask, transform, storage_options=None):
        self.records, self.task, self.transform = list(records), task, transform
        self.storage_options = storage_options or {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        return self.transform(read_image(r.image_url, self.storage_options)), self.task.target(r.label)


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


def make_loaders(h: dict[str, Any], data: PreparedData, task: ClassificationTask):
    seed = h.get("random_seed") or 0
    train_ds = ImageDataset(data.train, task, train_transform(h["training_crop_size"]), data.storage_options)
    valid_ds = ImageDataset(data.valid, task, eval_transform(h["validation_resize_size"], h["validation_crop_size"]),
                            data.storage_options)
    nw = _workers(h)
    common = dict(num_workers=nw, persistent_workers=nw > 0, pin_memory=torch.cuda.is_available())
    train = DataLoader(train_ds, batch_size=h["training_batch_size"], shuffle=True,
                       generator=torch.Generator().manual_seed(seed), drop_last=len(train_ds) > h["training_batch_size"],
                       **common)
    valid = DataLoader(valid_ds, batch_size=h["validation_batch_size"], shuffle=False, **common)
    return train, valid


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: ClassificationTask, loss_fn: nn.Module,
             device: torch.device) -> dict[str, float]:
    model.eval()
    probs, targets, loss_sum, n = [], [], 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(x)
        n += len(x)
        probs.append(task.probabilities(logits).float().cpu())
        targets.append(y.cpu())
    out = task.metrics(task.targets_array(torch.cat(targets)), torch.cat(probs).numpy())
    out["validation_loss"] = loss_sum / max(1, n)
    return out


def check_model_settings(h: dict[str, Any]) -> None:
    if get_entry(h["model_name"]).fixed_input and h["training_crop_size"] != h["validation_crop_size"]:
        raise TrainingError(f"{h['model_name']} needs training_crop_size == validation_crop_size (§6.4), "
                            f"but got {h['training_crop_size']} and {h['validation_crop_size']}")
    if h["validation_resize_size"] < h["validation_crop_size"]:
        raise TrainingError(f"validation_resize_size ({h['validation_resize_size']}) must be >= "
                            f"validation_crop_size ({h['validation_crop_size']})")


TRAINER_STATE = "trainer_state.pt"


def train(h: dict[str, Any], data: PreparedData, report: Report, *, weights: str | None = None,
          download_weights: bool = False, device: str | None = None, resume_from: str | None = None) -> dict[str, Any]:
    """Train one trial with resolved hyperparameters ``h``; returns a summary of the run.

    ``weights``: a weights file or a model package folder to start from (pretrained weights, or an
    earlier run's model for incremental training); tensors whose shape differs (a new head) are
    re-initialised. ``resume_from``: a checkpoint folder written by this loop; training goes on after
    the epoch it was taken at, with the optimiser, schedule and early-stopping state it had.
    """
    check_model_settings(h)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(h.get("random_seed") or 0)
    task = make_task(data.task, data.classes)
    if weights and Path(weights).is_dir():
        weights = str(Path(weights) / "model.safetensors")
    model = build_model(h["model_name"], len(data.classes), h["training_crop_size"], weights, download_weights)
    freeze_layers(model, h["model_name"], h.get("layers_to_freeze"))
    model.to(dev)
    train_loader, valid_loader = make_loaders(h, data, task)
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
        best, best_epoch, stale, n_evals, start = st["best"], st["best_epoch"], st["stale"], st["n_evals"], st["epoch"] + 1
        resumed_from = st["epoch"]
        log.info("resumed after epoch %d (best %s %.4f)", st["epoch"], primary, best)
    for epoch in range(start, epochs + 1):
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        opt.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(train_loader):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = loss_fn(model(x), y)
            (loss / accum).backward()
            if (i + 1) % accum == 0 or i + 1 == len(train_loader):
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
        train_loss = float(loss_sum) / max(1, seen)
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {epoch} of {h['model_name']}; "
                                f"try a lower learning_rate (now {h['learning_rate']:g})")
        elapsed = time.perf_counter() - t0
        if epoch % eval_every and epoch != epochs:
            continue
        n_evals += 1
        m = evaluate(model, valid_loader, task, loss_fn, dev)
        m.update(epoch=epoch, train_loss=train_loss, learning_rate=opt.param_groups[0]["lr"],
                 train_images_per_sec=seen / elapsed if elapsed > 0 else 0.0)
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
        if due:
            state = {"epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale, "n_evals": n_evals}

            def saver(path: str, _m=dict(m), _state=state) -> None:
                save_package(path, model=model, task=data.task, classes=data.classes, hyperparameters=h, metrics=_m)
                torch.save({**_state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                           Path(path) / TRAINER_STATE)
        report(m, saver)
        if h["early_stopping"] and n_evals > h["early_stopping_delay"]:
            if stale >= h["early_stopping_patience"]:
                log.info("early stopping after epoch %d (best %s %.4f at epoch %d)", epoch, primary, best, best_epoch)
                return {"best": best, "best_epoch": best_epoch, "epochs": epoch, "early_stopped": True}
    return {"best": best, "best_epoch": best_epoch, "epochs": epochs, "early_stopped": False}

"""Training throughput of the classification trainer vs. a plain PyTorch loop (issue 2).

Both sides train the same model (``build_model``) on the same prepared data, with the same
``ImageDataset`` + training transform, the same DataLoader settings (batch 32, shuffle, drop_last,
num_workers 0), the same seed and the same SGD settings; only the loop differs:

* visionsweep: ``trainers.engine.train(h, data, report)`` with ``evaluation_frequency=1``; the loop reports
  ``train_images_per_sec`` after every epoch, measured over the training part of the epoch only.
* plain: ``for x, y in loader: opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward();
  opt.step()``, each epoch timed the same way (from the first batch request to the end of the epoch).

The first epoch of every run is a warm-up and is skipped; a run's figure is the median of its other
epochs. After one untimed warm-up run of each side, sides run alternately in one process (A B, B A,
A B ...) so that drift and order effects hit both equally.
The result is the median over all measured epochs of visionsweep divided by that of plain.

    .venv/bin/python bench/classification_throughput.py [--model resnet18] [--size 64] [--epochs 4]
                                                        [--repeats 3] [--target 0.95]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from machine_info import alternate, describe

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainers.data import prepare_data
from trainers.hyperparameters import resolve_hyperparameters
from trainers.data.datasets import ImageDataset
from trainers.engine import make_optimizer, train
from trainers.models import build_model
from trainers.tasks import make_task
from trainers.tasks.classification import ClassificationSample
from trainers.transforms import train_transform

TASK = "image_classification"
TRAIN_DIR = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "fashion_mnist" / "train"
BATCH = 32
SEED = 0


def machine() -> str:
    return describe("torch")


def hyperparameters(model: str, size: int, epochs: int) -> dict:
    fixed = dict(model_name=model, training_crop_size=size, validation_resize_size=size, validation_crop_size=size,
                 training_batch_size=BATCH, number_of_epochs=epochs, early_stopping=False,
                 evaluation_frequency=1, random_seed=SEED, number_of_workers=0)
    return resolve_hyperparameters(TASK, fixed, {})


def run_visionsweep(h: dict, data) -> list[float]:
    """Per-epoch training images/s as reported by ``trainers.engine.train``."""
    rates: dict[int, float] = {}

    def report(metrics, _saver):
        rates[metrics["epoch"]] = metrics["train_images_per_sec"]

    train(h, data, report, device="cpu")
    return [rates[e] for e in sorted(rates)]


def run_plain(h: dict, data) -> list[float]:
    """Per-epoch training images/s of a plain PyTorch loop on the same model, data and optimiser."""
    torch.manual_seed(SEED)
    task = make_task(data.task, data.classes)
    model = build_model(h["model_name"], len(data.classes), h["training_crop_size"])
    ds = ImageDataset(data.train, ClassificationSample(task, train_transform(h["training_crop_size"])), data.store)
    loader = DataLoader(ds, batch_size=h["training_batch_size"], shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(SEED))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], h)  # same SGD lr/momentum/nesterov/wd
    rates = []
    for _ in range(h["number_of_epochs"]):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            seen += len(x)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64, help="training/validation crop and resize size")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, alternated (A B, B A, ...)")
    ap.add_argument("--target", type=float, default=0.95)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    torch.set_num_threads(2)
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {machine()}")
    data = prepare_data(TASK, "label", str(TRAIN_DIR), None, 0.2, SEED)
    h = hyperparameters(args.model, args.size, args.epochs)
    print(f"setup:   {args.model}, {args.size}x{args.size}, batch {BATCH}, {len(data.train)} train images "
          f"({len(data.train) // BATCH} steps/epoch), {args.epochs} epochs/run (first skipped), "
          f"{args.repeats} repeats, optimizer {h['optimizer']} lr {h['learning_rate']} "
          f"momentum {h['momentum']} nesterov {h['nesterov']} wd {h['weight_decay']}")

    sides = {"visionsweep": run_visionsweep, "plain": run_plain}
    warm = hyperparameters(args.model, args.size, 2)
    for fn in sides.values():  # untimed warm-up of both sides (allocator, kernels, page cache)
        fn(warm, data)
    return alternate(sides, (h, data), args.repeats, args.epochs, args.target, "{:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())

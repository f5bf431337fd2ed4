"""Training throughput of the classification trainer vs. the loop a user writes (issues 2 and 11).

The baseline is what a user writes without visionsweep, the whole input pipeline included: read the
JSONL, ``torchvision.io.decode_image`` each file, torchvision v2 transforms (the same augmentations:
random resized crop, flip, colour jitter, normalise), a ``DataLoader`` with worker processes
(``--plain-workers``, default 2), ``torchvision.models.<model>(num_classes=...)``, SGD with the same
settings, and ``for x, y in loader: zero_grad; cross_entropy; backward; step``. No visionsweep code.

visionsweep runs ``trainers.engine.train(h, data, report)`` at its defaults (``number_of_workers`` unset:
loading in the trial's process) with ``evaluation_frequency=1``; the loop reports
``train_images_per_sec`` after every epoch, measured over the training part of the epoch only. The
plain loop's epochs are timed the same way (from the first batch request to the end of the epoch).

The first epoch of every run is a warm-up and is skipped; a run's figure is the median of its other
epochs. After one untimed warm-up run of each side, sides run alternately in one process (A B, B A,
A B ...) so that drift and order effects hit both equally.
The result is the median over all measured epochs of visionsweep divided by that of plain.

    .venv/bin/python bench/classification_throughput.py [--model resnet18] [--size 64] [--epochs 4]
                                                        [--repeats 3] [--plain-workers 2] [--target 0.95]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine_info import alternate, describe
from torch.utils.data import DataLoader

from trainers.data import prepare_data
from trainers.engine import train
from trainers.hyperparameters import resolve_hyperparameters

TASK = "image_classification"
TRAIN_DIR = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "fashion_mnist" / "train"
TRAIN_JSONL = TRAIN_DIR / "train_annotations.jsonl"
BATCH = 32
SEED = 0


def machine() -> str:
    return describe("torch")


def hyperparameters(model: str, size: int, epochs: int) -> dict:
    fixed = dict(model_name=model, training_crop_size=size, validation_resize_size=size, validation_crop_size=size,
                 training_batch_size=BATCH, number_of_epochs=epochs, early_stopping=False,
                 evaluation_frequency=1, random_seed=SEED)
    return resolve_hyperparameters(TASK, fixed, {})


def run_visionsweep(h: dict, data) -> list[float]:
    """Per-epoch training images/s as reported by ``trainers.engine.train``."""
    rates: dict[int, float] = {}

    def report(metrics, _saver):
        rates[metrics["epoch"]] = metrics["train_images_per_sec"]

    train(h, data, report, device="cpu")
    return [rates[e] for e in sorted(rates)]


class JsonlImages(torch.utils.data.Dataset):
    """The dataset a user writes for a JSONL of image_url/label lines (paths relative to the file)."""

    def __init__(self, jsonl: Path, transform):
        import json

        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        self.classes = sorted({r["label"] for r in rows})
        self.items = [(str((jsonl.parent / r["image_url"]).resolve()), self.classes.index(r["label"])) for r in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from torchvision.io import ImageReadMode, decode_image

        path, label = self.items[i]
        return self.transform(decode_image(path, mode=ImageReadMode.RGB)), label


def run_plain(h: dict, workers: int, device: str = "cpu") -> list[float]:
    """Per-epoch training images/s of the plain torchvision loop (no visionsweep code), on ``device`` (``bench/gpu.py``
    runs it on CUDA: pinned memory, batches moved as a user moves them, the device synchronised per epoch)."""
    import torchvision
    from torchvision.transforms import v2

    torch.manual_seed(SEED)
    size = h["training_crop_size"]
    transform = v2.Compose([
        v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = JsonlImages(TRAIN_JSONL, transform)
    loader = DataLoader(ds, batch_size=h["training_batch_size"], shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(SEED),
                        pin_memory=device != "cpu")
    model = getattr(torchvision.models, h["model_name"])(num_classes=len(ds.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=h["learning_rate"], momentum=h["momentum"],
                          nesterov=h["nesterov"], weight_decay=h["weight_decay"])
    rates = []
    for _ in range(h["number_of_epochs"]):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            seen += len(x)
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64, help="training/validation crop and resize size")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, alternated (A B, B A, ...)")
    ap.add_argument("--plain-workers", type=int, default=2, help="DataLoader worker processes of the plain loop")
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

    print(f"plain:   torchvision decode_image + v2 transforms, DataLoader num_workers={args.plain_workers}, "
          f"torchvision.models.{args.model}, {len(JsonlImages(TRAIN_JSONL, None))} images (no split)")
    sides = {"visionsweep": lambda hh: run_visionsweep(hh, data), "plain": lambda hh: run_plain(hh, args.plain_workers)}
    warm = hyperparameters(args.model, args.size, 2)
    for fn in sides.values():  # untimed warm-up of both sides (allocator, kernels, page cache)
        fn(warm)
    return alternate(sides, (h,), args.repeats, args.epochs, args.target, "{:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())

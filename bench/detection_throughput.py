"""Training throughput of the detection trainer vs. torchvision's plain reference training loop.

Both sides train the same detector (``build_detector``, default ``fasterrcnn_resnet18_fpn`` with
``min_size = max_size = --size``) on the same records (the first ``--images`` training images of the
bundled tree tiles), with the same batch (2), DataLoader settings (shuffle, drop_last when there is more
than one batch, num_workers 0, ``collate_fn = tuple(zip(*batch))``), seed and SGD settings
(``make_optimizer``: lr 0.005, momentum 0.9, wd 1e-4, no schedule). Neither side augments: visionsweep runs
with ``advanced_settings.apply_automl_train_augmentations: false`` (its samples are the image as a float
tensor plus pixel boxes and 1-based labels), the plain side reads each image with PIL and converts it to
a float tensor. Only the loop differs:

* visionsweep: ``trainers.engine.train(h, data, report)``; the loop reports ``train_images_per_sec``
  after every evaluation (``evaluation_frequency`` 1), measured over the training part of the epoch only:
  evaluation, on a 2-image validation split, does not count.
* plain: the train_one_epoch pattern of torchvision's detection references:
  ``for images, targets in loader: loss = sum(model(images, targets).values()); opt.zero_grad();
  loss.backward(); opt.step()``, each epoch timed the same way (from the first batch request to the end
  of the epoch).

The first epoch of every run is a warm-up and is skipped; a run's figure is the median of its other
epochs. After one short untimed warm-up run of each side, sides run alternately in one process (A B,
B A, A B ...) so that drift and order effects hit both equally.
The result is the median over all measured epochs of visionsweep divided by that of plain.

    .venv/bin/python bench/detection_throughput.py [--model fasterrcnn_resnet18_fpn] [--size 256]
                                                   [--images 24] [--epochs 3] [--repeats 2] [--target 0.95]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from pathlib import Path

import torch
from machine_info import alternate, describe
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from trainers.data import prepare_data
from trainers.engine import make_optimizer, train
from trainers.hyperparameters import resolve_hyperparameters
from trainers.models.detectors import build_detector

TASK = "image_object_detection"
TRAIN_DIR = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "trees" / "train"
BATCH = 2
VALID_IMAGES = 2  # the engine evaluates after every epoch (to report its rate); keep that short (not timed)
SEED = 0


def machine() -> str:
    return describe("torch", "torchvision")


def hyperparameters(model: str, size: int, epochs: int) -> dict:
    fixed = dict(model_name=model, min_size=size, max_size=size, training_batch_size=BATCH,
                 validation_batch_size=BATCH, number_of_epochs=epochs, optimizer="sgd", learning_rate=0.005,
                 momentum=0.9, weight_decay=1e-4, learning_rate_scheduler="none", early_stopping=False,
                 evaluation_frequency=1, validation_metric_type="voc", random_seed=SEED,
                 number_of_workers=0, advanced_settings={"apply_automl_train_augmentations": False})
    return resolve_hyperparameters(TASK, fixed, {})


def run_visionsweep(h: dict, data) -> list[float]:
    """Per-epoch training images/s as reported by ``trainers.engine.train`` (it reports after each evaluation,
    so ``evaluation_frequency`` is 1; the validation split is tiny and evaluation is not timed)."""
    rates: dict[int, float] = {}

    def report(metrics, _saver):
        rates[metrics["epoch"]] = metrics["train_images_per_sec"]

    train(h, data, report, device="cpu")
    return [rates[e] for e in sorted(rates)]


class PlainDetectionDataset(Dataset):
    """(image float tensor, {"boxes": xyxy pixels, "labels": 1-based}) read with PIL, as in torchvision's
    detection references (crowd and sub-pixel boxes dropped, as the trainer's training samples do)."""

    def __init__(self, records, classes):
        self.records = list(records)
        self.index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        with Image.open(r.image_url) as im:
            im = im.convert("RGB")
        w, h = im.size
        boxes = torch.tensor([[b.top_x * w, b.top_y * h, b.bottom_x * w, b.bottom_y * h]
                              for b in r.label if not b.is_crowd], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.index[b.label] + 1 for b in r.label if not b.is_crowd], dtype=torch.int64)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        image = TF.to_dtype(TF.pil_to_tensor(im), torch.float32, scale=True)
        return image, {"boxes": boxes[keep], "labels": labels[keep]}


def run_plain(h: dict, data, device: str = "cpu") -> list[float]:
    """Per-epoch training images/s of torchvision's reference loop on the same model, data and optimiser, on
    ``device``."""
    torch.manual_seed(SEED)
    model = build_detector(h["model_name"], len(data.classes), h).to(device)
    ds = PlainDetectionDataset(data.train, data.classes)
    batch = h["training_batch_size"]
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, num_workers=0,
                        collate_fn=lambda b: tuple(zip(*b)), generator=torch.Generator().manual_seed(SEED))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], h)  # same SGD lr/momentum/nesterov/wd
    rates = []
    for _ in range(h["number_of_epochs"]):
        model.train()
        t0, seen = time.perf_counter(), 0
        for images, targets in loader:
            images = [i.to(device) for i in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(images)
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fasterrcnn_resnet18_fpn")
    ap.add_argument("--size", type=int, default=256, help="detector min_size = max_size")
    ap.add_argument("--images", type=int, default=24, help="training images per epoch (the first N of the split)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternated (A B, B A, ...)")
    ap.add_argument("--target", type=float, default=0.95)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    if args.images < BATCH:
        ap.error(f"--images must be >= the batch size ({BATCH})")

    torch.set_num_threads(2)
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {machine()}")
    full = prepare_data(TASK, "label", str(TRAIN_DIR), None, 0.2, SEED)
    data = dataclasses.replace(full, train=full.train[:args.images], valid=full.valid[:VALID_IMAGES])
    n = len(data.train)
    steps = n // BATCH if n > BATCH else 1
    h = hyperparameters(args.model, args.size, args.epochs)
    print(f"setup:   {args.model}, min/max size {args.size}, batch {BATCH}, {n} train images "
          f"({steps} steps/epoch, {steps * BATCH if n > BATCH else n} images/epoch), {args.epochs} epochs/run "
          f"(first skipped), {args.repeats} repeats, optimizer {h['optimizer']} lr {h['learning_rate']} "
          f"momentum {h['momentum']} nesterov {h['nesterov']} wd {h['weight_decay']}, "
          f"scheduler {h['learning_rate_scheduler']}, no augmentations, classes {data.classes}")

    sides = {"visionsweep": run_visionsweep, "plain": run_plain}
    # untimed warm-up of both sides (allocator, kernels, page cache): one epoch over a few images
    warm_data = dataclasses.replace(data, train=data.train[:min(n, 2 * BATCH)])
    warm = hyperparameters(args.model, args.size, 1)
    for fn in sides.values():
        fn(warm, warm_data)
    return alternate(sides, (h, data), args.repeats, args.epochs, args.target, "{:.2f}")

if __name__ == "__main__":
    raise SystemExit(main())

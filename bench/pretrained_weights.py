"""Pretrained weights vs random initialisation, fine-tuning recipes, and the cost of fetching weights
(issue 16). Three measurements, each printed with the machine line:

``accuracy``: the same job (``bench/jobs/fashion_finetune.yml``: one MobileNetV2 trial on the bundled
Fashion-MNIST sample, 320 training / 80 validation images, a fixed number of epochs, so both sides get the same
CPU budget) run with the real ImageNet MobileNetV2 weights (torchvision's ``mobilenet_v2-b0353104.pth``, from
the weights store ``.weights`` that ``make setup`` fills) and with ``visionsweep.pretrained: false``, same seed,
alternated A B / B A over several seeds. Each best model is scored on the 100 held-out images of
``trainers/sample_data/fashion_mnist/valid`` (no trial saw them; chance is 0.10). Prints every run, the margin
(mean, min, max over seeds) and PASS when the fine-tuned model is ahead on every seed.

``recipes``: in-process fine-tuning of the same weights with several optimiser / learning-rate recipes for the
same epochs (the held-out accuracy of each): where AutoMode's fine-tuning ranges come from.

``first-epoch``: seconds from a trial's start (weights fetched, model built) to its first evaluation, with a
cold weights store (the file on an S3 server, moto, not yet in the node cache) vs a warm node cache.

    .venv/bin/python bench/pretrained_weights.py accuracy [--seeds 3] [--epochs 8] [--crop 64]
    .venv/bin/python bench/pretrained_weights.py recipes [--epochs 8] [--crop 64]
    .venv/bin/python bench/pretrained_weights.py first-epoch [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine_info import describe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JOB = ROOT / "bench" / "jobs" / "fashion_finetune.yml"
STORE = ROOT / ".weights"
HELD_OUT = ROOT / "trainers" / "sample_data" / "fashion_mnist" / "valid"
FILE = "mobilenet_v2-b0353104.pth"


def held_out_accuracy(package: Path) -> float:
    from scheduler.demo import held_out_accuracy as score

    hits, n = score(package)
    return hits / n


def job_text(seed: int, pretrained: bool, epochs: int, crop: int) -> str:
    text = JOB.read_text()
    for k, v in {"EPOCHS": epochs, "CROP": crop, "SEED": seed}.items():
        text = text.replace(f"__{k}__", str(v))
    return text + f"  pretrained: {'true' if pretrained else 'false'}\n  weights_store: {STORE}\n"


def accuracy(args) -> int:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as the CLI does: no Tune tables on stdout
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    sides = {"pretrained": True, "scratch": False}
    acc: dict[str, list[float]] = {s: [] for s in sides}
    secs: dict[str, list[float]] = {s: [] for s in sides}
    for seed in range(args.seeds):
        order = list(sides.items()) if seed % 2 == 0 else list(reversed(sides.items()))
        for side, pretrained in order:
            job = parse_job(job_text(seed, pretrained, args.epochs, args.crop), source=JOB)
            with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
                t0 = time.perf_counter()
                result = run_job(job, Path(tmp) / "run", echo=lambda s: None)
                secs[side].append(time.perf_counter() - t0)
                a = held_out_accuracy(result.run_dir / "best")
            acc[side].append(a)
            print(f"  seed {seed} {side:<10} held-out accuracy {a:.3f}  (validation {result.best_metric:.3f}, "
                  f"{secs[side][-1]:.0f} s)", flush=True)
    margins = [p - s for p, s in zip(acc["pretrained"], acc["scratch"])]
    print()
    print("| side | " + " | ".join(f"seed {i}" for i in range(args.seeds)) + " | mean | job time (median) |")
    print("|---|" + "---:|" * args.seeds + "---:|---:|")
    for side in sides:
        print(f"| {side} | " + " | ".join(f"{v:.3f}" for v in acc[side]) + f" | {statistics.mean(acc[side]):.3f} | "
              f"{statistics.median(secs[side]):.0f} s |")
    print(f"\nmargin pretrained - scratch: mean {statistics.mean(margins):+.3f}, min {min(margins):+.3f}, "
          f"max {max(margins):+.3f} (chance 0.100)")
    ok = min(margins) > 0
    print(f"fine-tuned model ahead on every seed: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


RECIPES = [("sgd", 0.01), ("sgd", 0.003), ("adamw", 1e-3), ("adamw", 3e-4), ("adamw", 1e-4)]


def recipes(args) -> int:
    import torch

    from trainers.data import prepare_data
    from trainers.engine import train
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.weights.resolve import initial_weights
    from trainers.models.weights.sources import WeightsConfig
    from trainers.package import load_package

    torch.set_num_threads(os.cpu_count() or 1)
    data = prepare_data("image_classification", "label", str(ROOT / "trainers/sample_data/fashion_mnist/train"),
                        None, 0.2, 0)
    cfg = WeightsConfig.create(store=str(STORE), download=False, cache_dir=tempfile.mkdtemp(prefix="bench-cache-"))
    rows = []
    for init_kind in ("pretrained", "scratch"):
        for opt, lr in RECIPES if init_kind == "pretrained" else RECIPES[:1] + RECIPES[2:3]:
            h = resolve_hyperparameters("image_classification", {
                "model_name": "mobilenetv2", "number_of_epochs": args.epochs, "training_batch_size": 32,
                "validation_batch_size": 80, "training_crop_size": args.crop, "validation_resize_size": args.crop,
                "validation_crop_size": args.crop, "early_stopping": False, "warmup_cosine_lr_warmup_epochs": 1,
                "optimizer": opt, "learning_rate": lr, "random_seed": 0}, {})
            init = initial_weights(h, "image_classification", cfg) if init_kind == "pretrained" else None
            saves, metrics = [], []

            def report(m, save, saves=saves, metrics=metrics):
                metrics.append(m)
                if save:
                    saves.append(save)
            t0 = time.perf_counter()
            train(h, data, report, weights=init, device="cpu")
            secs = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as d:
                saves[-1](d)
                load_package(d)  # the package loads
                a = held_out_accuracy(Path(d))
            rows.append((init_kind, opt, lr, max(m["accuracy"] for m in metrics), a, secs))
            print(f"  {init_kind:<10} {opt:<5} lr {lr:<7g} validation {rows[-1][3]:.3f}  held-out {a:.3f}  "
                  f"({secs:.0f} s)", flush=True)
    print("\n| weights | optimizer | learning rate | best validation accuracy | held-out accuracy | time |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:g} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.0f} s |")
    return 0


def first_epoch(args) -> int:
    import torch

    from tests.storage_servers import moto_s3_server
    from trainers.data import prepare_data
    from trainers.data.storage import clear_cache
    from trainers.engine import train
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.weights.resolve import initial_weights
    from trainers.models.weights.sources import WeightsConfig

    torch.set_num_threads(os.cpu_count() or 1)
    data = prepare_data("image_classification", "label", str(ROOT / "trainers/sample_data/fashion_mnist/train"),
                        None, 0.2, 0)
    h = resolve_hyperparameters("image_classification", {
        "model_name": "mobilenetv2", "number_of_epochs": 1, "training_batch_size": 32,
        "training_crop_size": 32, "validation_resize_size": 32, "validation_crop_size": 32}, {})
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as work, moto_s3_server(Path(work)) as s3, s3.env():
        clear_cache()
        s3.create("weights")
        s3.put("weights", FILE, (STORE / FILE).read_bytes())
        warm_cache = str(Path(work) / "warm")

        def one(cache: str) -> tuple[float, float]:
            cfg = WeightsConfig.create(store="s3://weights", download=False, cache_dir=cache)
            t0 = time.perf_counter()
            init = initial_weights(h, "image_classification", cfg)
            fetched = time.perf_counter() - t0
            first: list[float] = []
            train(h, data, lambda m, save: first.append(time.perf_counter() - t0), weights=init, device="cpu")
            return fetched, first[0]

        one(warm_cache)  # fills the warm cache (and warms imports and the page cache)
        res: dict[str, list[tuple[float, float]]] = {"cold store": [], "warm cache": []}
        for r in range(args.repeats):
            for side in (("cold store", "warm cache") if r % 2 == 0 else ("warm cache", "cold store")):
                cache = tempfile.mkdtemp(prefix="cold-", dir=work) if side == "cold store" else warm_cache
                res[side].append(one(cache))
                print(f"  repeat {r + 1} {side:<10} weights ready {res[side][-1][0]:.2f} s, first evaluation "
                      f"{res[side][-1][1]:.1f} s", flush=True)
    print("\n| side | weights ready (median) | first evaluation (median) |\n|---|---:|---:|")
    med = {}
    for side, vals in res.items():
        med[side] = (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
        print(f"| {side} | {med[side][0]:.2f} s | {med[side][1]:.1f} s |")
    print(f"\ncold store - warm cache: weights {med['cold store'][0] - med['warm cache'][0]:+.2f} s, first "
          f"evaluation {med['cold store'][1] - med['warm cache'][1]:+.1f} s "
          f"(ratio {med['cold store'][1] / med['warm cache'][1]:.2f})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, default=3)
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--crop", type=int, default=64)
    r = sub.add_parser("recipes")
    r.add_argument("--epochs", type=int, default=8)
    r.add_argument("--crop", type=int, default=64)
    f = sub.add_parser("first-epoch")
    f.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (STORE / FILE).is_file():
        raise SystemExit(f"{STORE / FILE} is missing: run `make setup` (it fills the .weights store)")
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {describe('torch', 'torchvision')}")
    print(f"weights: {FILE} (torchvision MobileNet_V2_Weights.IMAGENET1K_V1) from {STORE.relative_to(ROOT)}/")
    return {"accuracy": accuracy, "recipes": recipes, "first-epoch": first_epoch}[args.what](args)


if __name__ == "__main__":
    raise SystemExit(main())

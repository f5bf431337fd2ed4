"""Model quality per task against plain fine-tunes, on a held-out test split no trial sees (issue 25).

For each task, three sides start from the same published weights and train at the same epochs and image size:

* **default**: visionsweep's default job: one trial naming only the model, the epochs and the image size (every
  other setting is visionsweep's default for that model);
* **automode**: AutoMode (no search space) given ``max_trials: 4``: the compute of four single trials;
* **plain**: the fine-tune a practitioner writes from the same weights file:
  - classification: torchvision's MobileNetV2, its classifier replaced, the standard transfer-learning loop
    (RandomResizedCrop + flip, ImageNet normalisation, AdamW at 3e-4 with cosine decay, batch 32);
  - detection: ultralytics YOLOv5's own trainer (the ``yolov5`` PyPI package's ``train``, its default
    fine-tuning hyperparameters) from the same ``yolov5s.pt`` (``bench/tools/yolov5_plain.py``, run in its own
    environment ``bench/.yolov5-env``: the package is a bench tool, not a dependency; see that file).

Data (fixed splits, written to a temporary folder; the same for every side):

* classification: the bundled Fashion-MNIST sample: its 400 ``train`` images split 320 train / 80 validation
  (seed 0); the 100 images of ``valid`` are the test split. Chance 0.10 (10 balanced classes). With
  ``--per-class N``, a larger class-balanced sample of Debian's ``dataset-fashion-mnist`` (the bundled sample's
  source): N train images per class (a fifth of them validation) and N test images per class from its t10k split.
* detection: the bundled aerial tree tiles: the 61 ``train`` tiles split 49 train / 12 validation (seed 0); the
  20 ``valid`` tiles are the test split. mAP at IoU 0.5 (and COCO 0.50:0.95), scored by visionsweep's evaluator
  for every side; a detector that finds nothing scores 0.

    .venv/bin/python bench/model_quality.py classification [--epochs 8] [--crop 64] [--per-class 100] [--sides ...]
    .venv/bin/python bench/model_quality.py detection [--epochs 10] [--size 256] [--sides default,automode,plain]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import describe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORE = ROOT / ".weights"
SAMPLES = ROOT / "trainers" / "sample_data"
YOLOV5_ENV = ROOT / "bench" / ".yolov5-env"
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SIDES = ("default", "automode", "plain")


def absolute_rows(source: Path) -> list[str]:
    """The JSONL lines of an MLTable folder, each image path made absolute (the tables are written elsewhere)."""
    rows = []
    for f in sorted(source.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["image_url"] = str((f.parent / row["image_url"]).resolve())
                rows.append(json.dumps(row))
    return rows


def split(source: Path, out: Path, n_valid: int, seed: int = 0) -> tuple[Path, Path]:
    """``source``'s lines split (seeded) into the MLTables ``out/train`` and ``out/valid``."""
    lines = absolute_rows(source)
    random.Random(seed).shuffle(lines)
    return write_table(out / "train", lines[n_valid:]), write_table(out / "valid", lines[:n_valid])


def write_table(folder: Path, rows: list[str]) -> Path:
    from trainers.data.tables import mltable_text

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "MLTable").write_text(mltable_text("data.jsonl"))
    return folder


def absolute_table(source: Path, out: Path) -> Path:
    return write_table(out, absolute_rows(source))


def run_visionsweep(text: str, where: Path) -> tuple[Path, float, dict]:
    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    job = parse_job(text, source=where / "job.yml")
    t0 = time.perf_counter()
    result = run_job(job, where / "run", echo=lambda s: None)
    secs = time.perf_counter() - t0
    plan = {}
    if (result.run_dir / "automode.json").is_file():
        plan = json.loads((result.run_dir / "automode.json").read_text())
    return result.run_dir / "best", secs, {"trials": len(result.rows), "best_validation": result.best_metric,
                                           "automode": plan}


# --- classification ---------------------------------------------------------------------------------------------
def classification_job(train: Path, valid: Path, epochs: int, crop: int, automode: bool) -> str:
    common = f"""\
task: image_classification
target_column_name: label
training_data: {{path: {train}, type: mltable}}
validation_data: {{path: {valid}, type: mltable}}
visionsweep: {{weights_store: {STORE}, tracking: {{enabled: false}}}}
"""
    size = (f"  number_of_epochs: {epochs}\n  training_crop_size: {crop}\n  validation_resize_size: {crop}\n"
            f"  validation_crop_size: {crop}\n")
    if automode:
        return common + "limits: {max_trials: 4, max_concurrent_trials: 2}\ntraining_parameters:\n" + size
    return common + "limits: {max_trials: 1}\ntraining_parameters:\n  model_name: mobilenetv2\n" + size


def plain_classifier(train: Path, test: Path, epochs: int, crop: int, seed: int = 0) -> float:
    """A practitioner's torchvision fine-tune of the ImageNet MobileNetV2 file; held-out accuracy on ``test``."""
    import torch
    from PIL import Image
    from torch import nn
    from torchvision import models, transforms

    torch.manual_seed(seed)

    def rows(folder):
        out = []
        for line in (folder / "data.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.append((r["image_url"], r["label"]))
        return out

    train_rows, test_rows = rows(train), rows(test)
    classes = sorted({lab for _, lab in train_rows})
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tf_train = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    tf_test = transforms.Compose([transforms.Resize(crop), transforms.CenterCrop(crop), transforms.ToTensor(), norm])

    class Data(torch.utils.data.Dataset):
        def __init__(self, items, tf):
            self.items, self.tf = items, tf

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, label = self.items[i]
            return self.tf(Image.open(path).convert("RGB")), classes.index(label)

    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(STORE / "mobilenet_v2-b0353104.pth", map_location="cpu"))
    model.classifier[1] = nn.Linear(model.last_channel, len(classes))
    loader = torch.utils.data.DataLoader(Data(train_rows, tf_train), batch_size=32, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(Data(test_rows, tf_test), batch_size=50):
            hits += int((model(x).argmax(1) == y).sum())
    return hits / len(test_rows)


def fashion_mnist(tmp: Path, per_class: int) -> tuple[Path, Path]:
    """A larger class-balanced Fashion-MNIST sample from Debian's ``dataset-fashion-mnist`` (the source of the
    bundled one, same generator): ``per_class`` train and ``per_class`` test images per class."""
    import trainers.sample_data.make_fashion_mnist as mf

    if not (FASHION_SOURCE / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{FASHION_SOURCE}: no Fashion-MNIST files (apt-get install dataset-fashion-mnist), or use "
                         "--per-class 0 for the bundled sample")
    images = tmp / "fashion-full" / "images"
    images.mkdir(parents=True)
    rng = random.Random(mf.SEED)
    tables = []
    for split_name, prefix in (("train", "train"), ("test", "t10k")):
        rows = mf.write_split(split_name, FASHION_SOURCE / f"{prefix}-images-idx3-ubyte.gz",
                              FASHION_SOURCE / f"{prefix}-labels-idx1-ubyte.gz", per_class, rng, images)
        tables.append(write_table(tmp / "fashion-full" / f"{split_name}-all", [json.dumps(
            {**mf.line(name, label), "image_url": str(images / name)}) for name, label in rows]))
    return tables[0], tables[1]


def classification(args, tmp: Path) -> list[dict]:
    from scheduler.holdout import score_package

    if args.per_class:
        source, test = fashion_mnist(tmp, args.per_class)
        train, valid = split(source, tmp / "fashion", n_valid=2 * args.per_class)
    else:
        train, valid = split(SAMPLES / "fashion_mnist" / "train", tmp / "fashion", n_valid=80)
        test = absolute_table(SAMPLES / "fashion_mnist" / "valid", tmp / "fashion" / "test")
    out = []
    for side in args.sides:
        t0 = time.perf_counter()
        if side == "plain":
            acc = plain_classifier(train, test, args.epochs, args.crop)
            info = {"trials": 1}
        else:
            best, _, info = run_visionsweep(classification_job(train, valid, args.epochs, args.crop,
                                                               side == "automode"), tmp / f"cls-{side}")
            acc = score_package(str(best), str(test))["accuracy"]
        out.append({"task": "classification", "side": side, "metric": acc, "seconds": time.perf_counter() - t0,
                    **info})
        print(f"  classification {side:<9} held-out accuracy {acc:.3f}  ({out[-1]['seconds']:.0f} s)", flush=True)
    return out


# --- detection --------------------------------------------------------------------------------------------------
def detection_job(train: Path, valid: Path, epochs: int, size: int, automode: bool) -> str:
    common = f"""\
task: image_object_detection
target_column_name: label
training_data: {{path: {train}, type: mltable}}
validation_data: {{path: {valid}, type: mltable}}
visionsweep: {{weights_store: {STORE}, tracking: {{enabled: false}}}}
"""
    fixed = f"  number_of_epochs: {epochs}\n  image_size: {size}\n  validation_metric_type: coco_voc\n"
    if automode:
        return common + "limits: {max_trials: 4, max_concurrent_trials: 2}\ntraining_parameters:\n" + fixed
    return common + ("limits: {max_trials: 1}\ntraining_parameters:\n  model_name: yolov5\n  model_size: small\n"
                     + fixed)


def plain_detector(train: Path, valid: Path, test: Path, epochs: int, size: int, tmp: Path) -> dict:
    """ultralytics YOLOv5's own trainer from yolov5s.pt, in its own environment; its best model's test-split
    predictions come back as JSON and are scored by visionsweep's evaluator like every other side."""
    python = YOLOV5_ENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: create the plain side's environment first "
                         "(bench/tools/yolov5_plain.py says how)")
    preds = tmp / "plain_predictions.json"
    cmd = [str(python), str(ROOT / "bench" / "tools" / "yolov5_plain.py"), "--train", str(train), "--valid",
           str(valid), "--test", str(test), "--weights", str(STORE / "yolov5s.pt"), "--epochs", str(epochs),
           "--size", str(size), "--work", str(tmp / "yolov5-plain"), "--out", str(preds)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return json.loads(preds.read_text())


def score_predictions(doc: dict, test: Path) -> dict:
    """mAP of predictions given per image path (pixel xyxy boxes, 0-based class index) on ``test``."""
    import numpy as np

    from trainers import hyperparameters as hp
    from trainers.data import load_records
    from trainers.detection_metrics import detection_metrics
    from trainers.tasks import make_task
    from trainers.tasks.detection import DetectionSample

    records = load_records(str(test), hp.DETECTION, "label")
    classes = doc["classes"]
    sample = DetectionSample(make_task(hp.DETECTION, classes), train=False)
    from trainers.data.images import read_image

    preds, gts = [], []
    for r in records:
        _, target = sample(read_image(r.image_url), r, 0)
        gts.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in target.items()})
        p = doc["predictions"][r.image_url]
        preds.append({"boxes": np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4),
                      "labels": np.asarray(p["labels"], dtype=np.int64) + 1,
                      "scores": np.asarray(p["scores"], dtype=np.float32)})
    return detection_metrics(preds, gts, classes, metric_type="coco_voc", iou_threshold=0.5)


def detection(args, tmp: Path) -> list[dict]:
    from scheduler.holdout import score_package

    train, valid = split(SAMPLES / "trees" / "train", tmp / "trees", n_valid=12)
    test = absolute_table(SAMPLES / "trees" / "valid", tmp / "trees" / "test")
    out = []
    for side in args.sides:
        t0 = time.perf_counter()
        if side == "plain":
            m = score_predictions(plain_detector(train, valid, test, args.epochs, args.size, tmp), test)
            info = {"trials": 1}
        else:
            best, _, info = run_visionsweep(detection_job(train, valid, args.epochs, args.size, side == "automode"),
                                            tmp / f"det-{side}")
            m = score_package(str(best), str(test), metric_type="coco_voc")
        out.append({"task": "detection", "side": side, "metric": m["mean_average_precision"],
                    "coco_map": m["coco_mean_average_precision"], "seconds": time.perf_counter() - t0, **info})
        print(f"  detection {side:<9} held-out mAP@0.5 {m['mean_average_precision']:.3f} "
              f"(COCO {m['coco_mean_average_precision']:.3f})  ({out[-1]['seconds']:.0f} s)", flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| task | side | trials | held-out metric | vs plain | time |", "|---|---|---:|---:|---:|---:|"]
    plain = {r["task"]: r["metric"] for r in rows if r["side"] == "plain"}
    for r in rows:
        diff = f"{100 * (r['metric'] - plain[r['task']]):+.1f} pt" if r["task"] in plain else "n/a"
        what = "accuracy" if r["task"] == "classification" else "mAP@0.5"
        lines.append(f"| {r['task']} | {r['side']} | {r['trials']} | {r['metric']:.3f} {what} | {diff} | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=("classification", "detection"))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--crop", type=int, default=64, help="classification image size")
    ap.add_argument("--size", type=int, default=256, help="detection image size")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--per-class", type=int, default=0,
                    help="classification: train on N and test on N images per class of Debian's full Fashion-MNIST "
                         "(dataset-fashion-mnist) instead of the bundled 400 + 100 (0)")
    args = ap.parse_args()
    args.sides = [s for s in args.sides.split(",") if s]
    args.epochs = args.epochs or (8 if args.task == "classification" else 10)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {describe('torch', 'torchvision', 'ray')}")
    print(f"setup:   {args.task}, {args.epochs} epochs, "
          f"size {args.crop if args.task == 'classification' else args.size}"
          f", sides {', '.join(args.sides)}")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as d:
        rows = (classification if args.task == "classification" else detection)(args, Path(d))
    print()
    print(table(rows))
    chance = "chance 0.100 (10 balanced classes)" if args.task == "classification" else \
        "a detector that finds nothing scores 0.000"
    print(f"\n{chance}")
    for r in rows:
        if r.get("automode"):
            print(f"AutoMode plan ({r['task']}): " + json.dumps({k: v for k, v in r["automode"].items()
                                                                  if k in ("plan", "actual", "models")})[:1500])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

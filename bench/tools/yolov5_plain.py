"""The plain side of ``bench/model_quality.py detection``: ultralytics YOLOv5's own trainer, as a practitioner runs it.

Runs in its own environment, never visionsweep's: the ``yolov5`` PyPI package (ultralytics YOLOv5 v7.0 as a
package, GPL-3.0) pins an old huggingface-hub and pulls AGPL ultralytics, so it is a bench tool and no dependency.
Create the environment once (it installs from the package registry):

    python3 -m venv bench/.yolov5-env
    bench/.yolov5-env/bin/pip install torch==2.14.1 torchvision==0.29.1 yolov5==7.0.14 "setuptools<81"

What it does: converts the bench's MLTable splits (visionsweep's JSONL: normalised boxes) to the YOLO layout
(``images/<split>`` links, ``labels/<split>/*.txt`` of ``class cx cy w h``), trains with ``yolov5.train.run`` from
the given ``yolov5s.pt`` at the given epochs and image size with the package's default fine-tuning
hyperparameters (``hyp.scratch-low.yaml``, batch 16, SGD lr 0.01, mosaic), then predicts the test split with the
best checkpoint at the evaluator's low confidence floor (0.001, NMS IoU 0.6: what YOLOv5's own ``val`` uses for
mAP) and writes ``--out``: ``{"classes": [...], "predictions": {image path: {"boxes" (pixel xyxy), "labels"
(0-based), "scores"}}}``, which the bench scores with visionsweep's evaluator like every other side.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def rows(table: Path) -> list[dict]:
    out = []
    for f in sorted(table.glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def to_yolo(splits: dict[str, Path], work: Path) -> tuple[Path, list[str]]:
    classes = sorted({b["label"] for r in rows(splits["train"]) for b in r["label"]})
    for split, table in splits.items():
        (work / "images" / split).mkdir(parents=True, exist_ok=True)
        (work / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in rows(table):
            src = Path(r["image_url"])
            link = work / "images" / split / src.name
            if not link.exists():
                link.symlink_to(src)
            lines = []
            for b in r["label"]:
                if b["label"] not in classes:
                    continue
                cx, cy = (b["topX"] + b["bottomX"]) / 2, (b["topY"] + b["bottomY"]) / 2
                w, h = b["bottomX"] - b["topX"], b["bottomY"] - b["topY"]
                lines.append(f"{classes.index(b['label'])} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (work / "labels" / split / f"{src.stem}.txt").write_text("\n".join(lines) + "\n")
    data = work / "data.yaml"
    data.write_text(f"path: {work}\ntrain: images/train\nval: images/valid\ntest: images/test\n"
                    f"names: {json.dumps(classes)}\n")
    return data, classes


def _offline_font(config: Path) -> None:
    """YOLOv5 checks a dataset by downloading Arial.ttf into its config folder (for plots it draws later); offline,
    matplotlib's DejaVu Sans stands in (the font changes nothing but the look of plots, which are off here)."""
    import matplotlib

    config.mkdir(parents=True, exist_ok=True)
    os.environ["YOLOV5_CONFIG_DIR"] = str(config)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (config / name).exists():
            (config / name).write_bytes(font.read_bytes())


def main() -> int:
    ap = argparse.ArgumentParser()
    for k in ("train", "valid", "test", "weights", "work", "out"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("YOLOv5_AUTOINSTALL", "false")  # offline: never pip-install at run time
    os.environ.setdefault("YOLOv5_OFFLINE", "true")
    # YOLOv5's trainer unpickles its checkpoints whole (models, numpy arrays): torch >= 2.6 refuses that by default.
    # The bench hands it the release file visionsweep's store checked against its published hash, and its own
    # checkpoints.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    work = Path(args.work)
    _offline_font(work / "config")
    data, classes = to_yolo({"train": Path(args.train), "valid": Path(args.valid), "test": Path(args.test)}, work)

    import sys

    import numpy as np

    if not hasattr(np, "trapz"):  # YOLOv5 7.0's AP code calls numpy's old name, gone in numpy 2.4
        np.trapz = np.trapezoid
    from yolov5 import train

    sys.argv = sys.argv[:1]  # train.run parses the command line too: ours is not its
    train.run(data=str(data), weights=args.weights, epochs=args.epochs, imgsz=args.size, batch_size=args.batch,
              device="cpu", project=str(work), name="run", exist_ok=True, noplots=True, workers=0)
    best = work / "run" / "weights" / "best.pt"

    import torch
    from PIL import Image
    from yolov5.models.common import DetectMultiBackend
    from yolov5.utils.augmentations import letterbox
    from yolov5.utils.general import non_max_suppression, scale_boxes

    model = DetectMultiBackend(str(best), device=torch.device("cpu"))
    model.eval()
    preds = {}
    for r in rows(Path(args.test)):
        im0 = np.asarray(Image.open(r["image_url"]).convert("RGB"))
        im = letterbox(im0, args.size, stride=int(model.stride), auto=False)[0]
        x = torch.from_numpy(im.transpose(2, 0, 1).copy()).float()[None] / 255.0
        with torch.no_grad():
            det = non_max_suppression(model(x), conf_thres=0.001, iou_thres=0.6, max_det=300)[0]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape).round()
        preds[r["image_url"]] = {"boxes": det[:, :4].tolist(), "scores": det[:, 4].tolist(),
                                 "labels": det[:, 5].long().tolist()}
    Path(args.out).write_text(json.dumps({"classes": classes, "predictions": preds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Inference images/s of a package's ONNX export under onnxruntime vs. the PyTorch package, on CPU, same images.

For each model a package is written (random weights: speed does not depend on them), exported with
``visionsweep export`` (``trainers.package.onnx.export_onnx``), and both sides predict the same batches of
real images, pre-processed once beforehand so that only the model runs are timed:

* classification (``resnet18`` and ``vitb16r224`` at 224 px): the bundled Fashion-MNIST images, resized
  and center-cropped by the package's own transform, batches of ``--batch`` (the graph's batch axis is
  dynamic);
* detection (``fasterrcnn_resnet18_fpn``, ``min_size = max_size = 256``): the bundled 256 px tree tiles,
  one image per call (the service's detector graph takes a fixed batch).

PyTorch side: ``package.model(x)`` under ``torch.no_grad()`` (for detectors, the model on the list of
images: what the Predictor runs). ONNX side: ``InferenceSession.run`` with the CPU provider. Both use all
cores (torch's default threads; onnxruntime's default intra-op pool). After one untimed warm-up pass of each,
the sides alternate (A B, B A, ...) for ``--repeats`` rounds of ``--rounds`` passes each; the figure is the
median images/s over the rounds, and the ratio is onnxruntime / PyTorch.

    .venv/bin/python bench/onnx_inference.py [--repeats 4] [--rounds 3] [--batch 8] [--images 32]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine_info import describe, repeats_table
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainers import hyperparameters as hp  # noqa: E402
from trainers.package import load_package, save_package  # noqa: E402
from trainers.package.onnx import export_onnx  # noqa: E402


def classifier_package(root: Path, name: str) -> Path:
    from trainers.models.factory import create_model

    h = hp.resolve_hyperparameters(hp.MULTICLASS, {"model_name": name, "validation_resize_size": 224,
                                                   "validation_crop_size": 224}, {})
    model = create_model(name, task=hp.MULTICLASS, num_classes=10, settings=h)
    return save_package(root / name, model=model, task=hp.MULTICLASS,
                        classes=[str(i) for i in range(10)], hyperparameters=h, metrics={})


def detector_package(root: Path, name: str) -> Path:
    from trainers.models.factory import create_model

    h = hp.resolve_hyperparameters(hp.DETECTION, {"model_name": name, "min_size": 256, "max_size": 256}, {})
    model = create_model(name, task=hp.DETECTION, num_classes=1, settings=h)
    return save_package(root / name, model=model, task=hp.DETECTION, classes=["Tree"],
                        hyperparameters=h, metrics={})


def sides_for(pkg_dir: Path, onnx_path: Path, batches: list[torch.Tensor], detection: bool):
    import onnxruntime as ort

    pkg = load_package(str(pkg_dir), "cpu")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    arrays = [b.numpy() for b in batches]

    @torch.no_grad()
    def pytorch() -> None:
        for b in batches:
            pkg.model(list(b)) if detection else pkg.model(b)

    def onnxruntime() -> None:
        for a in arrays:
            sess.run(None, {name: a})

    return {"onnxruntime": onnxruntime, "pytorch": pytorch}


def measure(sides: dict, n_images: int, repeats: int, rounds: int) -> tuple[dict, dict]:
    for fn in sides.values():  # warm-up
        fn()
    per_repeat: dict[str, list[float]] = {s: [] for s in sides}
    pooled: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(repeats):
        order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
        for side, fn in order:
            rates = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                fn()
                rates.append(n_images / (time.perf_counter() - t0))
            per_repeat[side].append(statistics.median(rates))
            pooled[side].extend(rates)
    return per_repeat, {s: statistics.median(v) for s, v in pooled.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--models", default="resnet18,vitb16r224,fasterrcnn_resnet18_fpn")
    args = ap.parse_args()
    print(f"# ONNX (onnxruntime) vs PyTorch package inference, {dt.date.today()}")
    print(f"# {describe('torch', 'onnxruntime')}")
    fashion = sorted((ROOT / "trainers" / "sample_data" / "fashion_mnist" / "images").glob("*.png"))
    trees = sorted((ROOT / "trainers" / "sample_data" / "trees" / "images").glob("*.jpg"))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for name in args.models.split(","):
            detection = name in hp.DETECTION_MODELS
            if detection:
                from torchvision.transforms.functional import pil_to_tensor

                pkg = detector_package(root, name)
                imgs = [pil_to_tensor(Image.open(p).convert("RGB")).float() / 255 for p in trees[:args.images]]
                batches = [im.unsqueeze(0) for im in imgs]
                onnx = export_onnx(str(pkg), root / f"{name}.onnx", image_size="256x256", check=False).path
            else:
                from trainers.transforms import eval_transform

                pkg = classifier_package(root, name)
                t = eval_transform(224, 224)
                x = torch.stack([t(Image.open(p).convert("RGB")) for p in fashion[:args.images]])
                batches = list(x.split(args.batch))
                onnx = export_onnx(str(pkg), root / f"{name}.onnx", batch_size=args.batch, check=False).path
            n = sum(len(b) for b in batches)
            per_repeat, med = measure(sides_for(pkg, onnx, batches, detection), n, args.repeats, args.rounds)
            print(f"\n## {name} ({n} images per pass, {'1 per call' if detection else f'batches of {args.batch}'})")
            print(repeats_table(per_repeat, med, "{:.1f}", ""))
            ratio = med["onnxruntime"] / med["pytorch"]
            print(f"ratio onnxruntime / pytorch = {ratio:.2f}")
            rows.append((name, med["pytorch"], med["onnxruntime"], ratio))
    print("\n| model | PyTorch img/s | onnxruntime img/s | ratio |\n|---|---:|---:|---:|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {r:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployment figures of a finished run's best model, side by side in one process (issue 28): the PyTorch
package, its ONNX export, its INT8 export as runs make it (a detector's convolutions only,
``trainers.package.int8.DETECTOR_OPERATORS``) and, for a detector, the INT8 export with every operator quantised
(what onnxruntime does by default), each scored with the task's metric on the run's validation images and timed at
batch 1 (``trainers.package.forms.measure_package``, the code ``run`` uses). Ratios are against the PyTorch side.

    .venv/bin/python bench/deployment_forms.py RUN [--repeats 3]

RUN: a run folder with ``best/`` and ``data/`` (e.g. ``runs/demo-*/trees_detection`` after ``make demo``: YOLOv5s
fine-tuned from the ultralytics COCO release). Latency is the median over ``--repeats`` measurements of each side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

from machine_info import describe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from scheduler.deployment import CALIBRATION_IMAGES, MAX_IMAGES
    from scheduler.predictions import run_image_url
    from trainers.data import load_records
    from trainers.data.images import ImageStore
    from trainers.package import int8
    from trainers.package.forms import TOLERANCE, measure_package
    from trainers.package.int8 import image_urls, seeded_sample
    from trainers.tasks import known_task

    run, package = args.run.resolve(), args.run.resolve() / "best"
    meta = json.loads((package / "model.json").read_text())
    task, model = meta["task"], meta["model_name"]
    task_class = known_task(task, "model.json")
    primary = task_class.primary_metric
    records = seeded_sample(load_records(str(run / "data" / "valid.jsonl"), task, "label"), MAX_IMAGES)
    pairs = [(ImageStore().image(run_image_url(r.image_url, run)), r) for r in records]
    calibration = [run_image_url(u, run) for u in seeded_sample(image_urls(run / "data" / "train.jsonl"),
                                                                 CALIBRATION_IMAGES)]
    sides = [("pytorch", "pytorch", int8.DETECTOR_OPERATORS), ("onnx", "onnx", int8.DETECTOR_OPERATORS),
             ("onnx-int8", "onnx-int8", int8.DETECTOR_OPERATORS)]
    if task_class.collate is not None:  # a detector (lists of images): its INT8 form with every operator too
        sides.append(("onnx-int8 (every operator)", "onnx-int8", None))
    rows: dict[str, list] = {name: [] for name, _, _ in sides}
    for rep in range(args.repeats):
        for name, form, ops in (sides if rep % 2 == 0 else sides[::-1]):
            int8.DETECTOR_OPERATORS = ops
            with tempfile.TemporaryDirectory() as tmp:
                # an INT8 form is quantised from the fp32 graph its own call exports
                forms = ("onnx", form) if form == "onnx-int8" else (form,)
                (fig,) = [f for f in measure_package(package, pairs, primary, tmp, forms=forms,
                                                     calibration=calibration) if f.form == form]
            if fig.error:
                raise SystemExit(f"{name}: {fig.error}")
            rows[name].append(fig)
    base = statistics.median(f.latency_ms["p50"] for f in rows["pytorch"])
    reference = rows["pytorch"][0].metric
    print(f"# {run.name}: {model} ({task}), {len(pairs)} validation images, {primary}; "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {describe()}")
    print(f"| form | {primary} | loss vs package | p50 ms (median of {args.repeats}) | p50 / PyTorch p50 | "
          "best images/s | size MB | flagged (over its tolerance) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, figs in rows.items():
        f = figs[0]  # the metric is deterministic; latency varies
        p50 = statistics.median(x.latency_ms["p50"] for x in figs)
        rate = statistics.median(x.throughput["images_per_s"] for x in figs)
        loss = reference - f.metric
        flagged = loss > TOLERANCE.get(f.form, float("inf"))  # as measure_package flags a form
        print(f"| {name} | {f.metric:.4f} | {loss:.4f} | {p50:.1f} | {p50 / base:.2f} | {rate:.1f} | "
              f"{f.size_mb or ''} | {'yes' if flagged else 'no'} |")


if __name__ == "__main__":
    main()

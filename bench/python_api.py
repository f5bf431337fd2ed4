"""The demo's sweep from a notebook vs. from the command line (issue 20): the same job, built with the service SDK's
cells (``visionsweep.automl`` ... , submitted with ``MLClient().jobs.create_or_update`` + ``stream``) beside
``visionsweep run scheduler/jobs/fashion_mnist_sweep.yml``. Both fine-tune MobileNetV2 from its ImageNet weights (the
``.weights`` store ``make setup`` fills), 4 trials of 8 epochs at 64 px, 2 at a time, with the same seed: the same
sampled trials.

The Python job is first checked to *be* the YAML job (the same resolved job). Each side is timed from the command's
start to its end (Python start, imports and the embedded Ray's start included), alternately, and its best model
is scored on the 100 held-out Fashion-MNIST test images no trial saw (chance 0.10). The ratio is
median(notebook) / median(cli): what the Python path costs over the CLI.

    .venv/bin/python bench/python_api.py [--repeats 1] [--target 1.1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import describe, repeats_table

from scheduler.demo import held_out_accuracy

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "scheduler" / "jobs" / "fashion_mnist_sweep.yml"

# The demo's job as notebook cells (the data path relative to the job file's folder, as the YAML has it).
NOTEBOOK = """
import sys
from visionsweep import automl, Input, MLClient
from visionsweep.automl import SearchSpace, ClassificationPrimaryMetrics
from visionsweep.sweep import Choice, LogUniform
from visionsweep.constants import AssetTypes

job = automl.image_classification(
    experiment_name="visionsweep-demo", compute="local", log_verbosity="info",
    description="Fashion-MNIST sample, random sweep fine-tuning MobileNetV2 (ImageNet weights) on CPU",
    training_data=Input(type=AssetTypes.MLTABLE, path="../../trainers/sample_data/fashion_mnist/train"),
    target_column_name="label", primary_metric=ClassificationPrimaryMetrics.ACCURACY, validation_data_size=0.2,
    visionsweep={"tracking": {"register_model": "fashion-mnist-demo"}}, base_dir=sys.argv[1])
job.set_limits(timeout_minutes=20, max_trials=4, max_concurrent_trials=2)
job.set_training_parameters(model_name="mobilenetv2", number_of_epochs=8, early_stopping=True, evaluation_frequency=1,
                            training_batch_size=32, validation_batch_size=80, training_crop_size=64,
                            validation_resize_size=64, validation_crop_size=64, warmup_cosine_lr_warmup_epochs=1)
job.extend_search_space([
    SearchSpace(optimizer=Choice(["adamw"]), learning_rate=LogUniform(-9.2, -6.2)),
    SearchSpace(optimizer=Choice(["sgd"]), learning_rate=LogUniform(-5.8, -3.5), momentum=Choice([0.85, 0.9, 0.95])),
])
job.set_sweep(sampling_algorithm="Random")
if sys.argv[2] == "check":
    from scheduler.spec import load_job
    assert job.validated().resolved() == load_job(sys.argv[3]).resolved(), "the notebook's job is not the YAML's"
    print("the notebook's job is the YAML job")
    sys.exit(0)
ml_client = MLClient()
returned_job = ml_client.jobs.create_or_update(job, output=sys.argv[3])
ml_client.jobs.stream(returned_job.name)
"""


def run(side: str, tmp: Path) -> tuple[float, float]:
    out = tmp / f"{side}-run"
    env = {**os.environ, "VISIONSWEEP_HOME": str(tmp / f"{side}-home"),
           "VISIONSWEEP_WEIGHTS_STORE": str(ROOT / ".weights")}
    env.pop("RAY_ADDRESS", None)
    cmd = ([sys.executable, "-m", "visionsweep.cli", "run", str(JOB), "--output", str(out)] if side == "cli" else
           [sys.executable, "-c", NOTEBOOK, str(JOB.parent), "submit", str(out)])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    correct, n = held_out_accuracy(out / "best")
    return wall, correct / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--target", type=float, default=1.1)
    args = ap.parse_args()
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {describe('torch', 'ray')}")
    check = subprocess.run([sys.executable, "-c", NOTEBOOK, str(JOB.parent), "check", str(JOB)], cwd=ROOT,
                           capture_output=True, text=True)
    print(f"job:     {JOB.relative_to(ROOT)}; {check.stdout.strip() or check.stderr.strip()[-500:]}")
    if check.returncode != 0:
        return 1
    sides = ("cli", "notebook")
    walls: dict[str, list[float]] = {s: [] for s in sides}
    accs: dict[str, list[float]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="vs-pyapi-") as d:
        for r in range(args.repeats):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                rep = Path(d) / f"r{r}"
                rep.mkdir(exist_ok=True)
                wall, acc = run(side, rep)
                walls[side].append(wall)
                accs[side].append(acc)
                print(f"  repeat {r + 1} {side:<9} {wall:6.1f} s   held-out accuracy {acc:.3f} (chance 0.10)",
                      flush=True)
    med = {s: statistics.median(v) for s, v in walls.items()}
    print()
    print(repeats_table(walls, med, "{:.1f}", " s"))
    ratio = med["notebook"] / med["cli"]
    ok = ratio <= args.target
    print(f"\nratio notebook / cli = {ratio:.3f}  (target <= {args.target})  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

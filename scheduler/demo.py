"""``make demo``: the embedded default job on the bundled Fashion-MNIST sample, then predictions.

Runs ``scheduler/jobs/fashion_mnist_sweep.yml`` (a short random sweep on an embedded local Ray),
prints the leaderboard and the time taken, then loads ``RUN_DIR/best`` the way ``visionsweep predict``
does and scores it on the 100 held-out test images that no trial saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

JOB = Path(__file__).parent / "jobs" / "fashion_mnist_sweep.yml"
HELD_OUT = Path(__file__).parent.parent / "trainers" / "sample_data" / "fashion_mnist" / "valid"


def run_demo(output: str | None = None) -> int:
    from scheduler.controller import run_job
    from scheduler.leaderboard import format_table
    from scheduler.spec import load_job
    from serving.predictor import Predictor
    from trainers import hyperparameters as hp
    from trainers.data import load_records

    t0 = time.time()
    job = load_job(JOB)
    print(f"== visionsweep demo: {JOB.name} ({job.spec.limits.max_trials} trials, "
          f"{job.spec.limits.max_concurrent_trials} at a time) ==", flush=True)
    result = run_job(job, output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    print("\n== leaderboard ==")
    print(format_table(result.rows, job.primary_metric))
    print(f"\nsweep time: {result.elapsed_s:.1f}s; run folder: {result.run_dir}")

    print("\n== predictions of the best model on held-out images ==")
    predictor = Predictor(str(result.run_dir / "best"), device="cpu")
    records = load_records(str(HELD_OUT), hp.MULTICLASS, "label")
    responses = predictor.predict_images([Path(r.image_url).read_bytes() for r in records])
    hits = 0
    for r, resp in zip(records, responses):
        top = max(range(len(resp["probs"])), key=resp["probs"].__getitem__)
        hits += resp["labels"][top] == r.label
    first = responses[0]
    top = sorted(zip(first["probs"], first["labels"]), reverse=True)[:3]
    print(f"{Path(records[0].image_url).name} (true: {records[0].label}) -> top 3: "
          + ", ".join(f"{lab} {p:.3f}" for p, lab in top))
    print("response JSON (first image, probs rounded): "
          + json.dumps({"probs": [round(p, 4) for p in first["probs"]], "labels": first["labels"]}))
    print(f"held-out accuracy: {hits}/{len(records)} = {hits / len(records):.3f}")
    print(f"\ntotal demo time: {time.time() - t0:.1f}s")
    return 0

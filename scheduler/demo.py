"""``make demo``: the embedded default jobs on the bundled Fashion-MNIST sample, then predictions.

1. ``scheduler/jobs/fashion_mnist_sweep.yml``: a short manual random sweep on an embedded local Ray;
2. ``scheduler/jobs/fashion_mnist_automode.yml``: AutoMode with the same budget (models and ranges
   chosen by visionsweep, weak trials stopped by ASHA);
then prints each leaderboard, what AutoMode chose, the time taken, and loads the better run's
``best/`` package the way ``visionsweep predict`` does to score it on 100 held-out test images that
no trial saw, and serves it on Ray Serve behind a keyed endpoint and answers a real HTTP request.
3. ``scheduler/jobs/trees_detection.yml``: object detection, a short RetinaNet sweep on the bundled
   aerial tree tiles, then the best detector's boxes for a validation tile.
Each run folder has a ``report.html`` (the detection run's shows its mAP curves).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

JOBS = Path(__file__).parent / "jobs"
HELD_OUT = Path(__file__).parent.parent / "trainers" / "sample_data" / "fashion_mnist" / "valid"
TREES_VALID = Path(__file__).parent.parent / "trainers" / "sample_data" / "trees" / "valid"


def run_demo(output: str | None = None) -> int:
    from scheduler.controller import run_job
    from scheduler.leaderboard import format_table
    from scheduler.spec import load_job
    from serving.predictor import Predictor
    from trainers import hyperparameters as hp
    from trainers.data import load_records

    t0 = time.time()
    root = Path(output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    results = []
    for name in ("fashion_mnist_sweep.yml", "fashion_mnist_automode.yml"):
        job = load_job(JOBS / name)
        print(f"\n== visionsweep demo: {name} ({job.mode} mode, {job.spec.limits.max_trials} trials, "
              f"{job.spec.limits.max_concurrent_trials} at a time) ==", flush=True)
        result = run_job(job, root / Path(name).stem)
        print(f"\n== leaderboard: {name} ==")
        print(format_table(result.rows, job.primary_metric))
        if (result.run_dir / "automode.json").is_file():
            plan = json.loads((result.run_dir / "automode.json").read_text())
            print("AutoMode chose: " + "; ".join(f"{m['model_name']} ({m['why']})" for m in plan["models"]))
        print(f"sweep time: {result.elapsed_s:.1f}s; report: {result.run_dir / 'report.html'}")
        results.append(result)
    result = max(results, key=lambda r: r.best_metric or 0.0)

    print(f"\n== predictions of the best model ({result.run_dir.name}/best) on held-out images ==")
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
    _serve_and_ask(result.run_dir, Path(records[1].image_url), records[1].label)
    _detection(root)
    print(f"\ntotal demo time: {time.time() - t0:.1f}s")
    return 0


def _detection(root: Path) -> None:
    """The detection sweep on the bundled tree tiles, its leaderboard, and the best detector's boxes."""
    from scheduler.controller import run_job
    from scheduler.leaderboard import format_table
    from scheduler.spec import load_job
    from serving.predictor import Predictor
    from trainers import hyperparameters as hp
    from trainers.data import load_records

    name = "trees_detection.yml"
    job = load_job(JOBS / name)
    print(f"\n== visionsweep demo: {name} (object detection, {job.spec.limits.max_trials} trials of "
          f"{job.training_parameters['model_name']}, {job.spec.limits.max_concurrent_trials} at a time) ==",
          flush=True)
    result = run_job(job, root / Path(name).stem)
    print(f"\n== leaderboard: {name} ==")
    print(format_table(result.rows, job.primary_metric))
    print(f"sweep time: {result.elapsed_s:.1f}s; mAP curves per trial: {result.run_dir / 'report.html'}")
    records = load_records(str(TREES_VALID), hp.DETECTION, "label")
    predictor = Predictor(str(result.run_dir / "best"), device="cpu")
    (resp,) = predictor.predict_images([Path(records[0].image_url).read_bytes()])
    boxes = resp["boxes"]
    print(f"{Path(records[0].image_url).name}: {len(records[0].label)} trees labelled, {len(boxes)} boxes predicted "
          f"at box_score_threshold {predictor.pkg.settings['box_score_threshold']}"
          + (f"; best: {json.dumps(boxes[0])}" if boxes else ""))


def _serve_and_ask(run_dir: Path, image: Path, label: str) -> None:
    """Serve the best model on Ray Serve with a keyed endpoint and answer one real HTTP request.

    The model is the version the sweep registered (``azureml:<name>:<version>`` in the run's MLflow registry),
    else the package folder ``RUN/best``."""
    import base64
    import os
    import socket
    import urllib.error
    import urllib.request

    from ray import serve

    from serving.cli import serve_package, start_serve

    os.environ.setdefault("VISIONSWEEP_HOME", str(run_dir / "serving"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print("\n== serving the best model over HTTP (Ray Serve) ==", flush=True)
    t0 = time.time()
    start_serve("127.0.0.1", port, detached=False)
    try:
        tracking = json.loads((run_dir / "summary.json").read_text()).get("tracking") or {}
        registered = tracking.get("registered_model")
        model = str(run_dir / "best")
        if registered:
            os.environ["MLFLOW_TRACKING_URI"] = tracking["uri"]
            model = f"azureml:{registered['name']}:{registered['version']}"
        print(f"model: {model}" + (f" (MLflow registry {tracking['uri']})" if registered else ""))
        info = serve_package(model, "127.0.0.1", port, "key", name="demo")
        print(f"endpoint ready in {time.time() - t0:.1f}s at {info['url']} (key auth)")
        body = json.dumps({"input_data": {"columns": ["image"], "data": [base64.b64encode(image.read_bytes()).decode()]}})
        req = urllib.request.Request(info["url"], data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {info['key']}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            resp = json.loads(r.read())
            deployment = r.headers.get("azureml-model-deployment")
        top = max(zip(resp[0]["probs"], resp[0]["labels"]))
        print(f"POST {image.name} (true: {label}) -> HTTP 200 from deployment {deployment}: "
              f"{top[1]} ({top[0]:.3f})")
        try:
            urllib.request.urlopen(urllib.request.Request(info["url"], data=body.encode(), method="POST",
                                                          headers={"Content-Type": "application/json"}), timeout=60)
        except urllib.error.HTTPError as e:
            print(f"the same request without the key -> HTTP {e.code}")
    finally:
        serve.shutdown()

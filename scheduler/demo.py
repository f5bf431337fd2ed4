"""``make demo``: the embedded default jobs on the bundled Fashion-MNIST sample, then predictions.

1. ``scheduler/jobs/fashion_mnist_sweep.yml``: a short manual random sweep on an embedded local Ray that
   fine-tunes MobileNetV2 from its published ImageNet weights (torchvision's file, from the weights store
   ``.weights`` that ``make setup`` fills: the machine needs no internet);
2. the same sweep from random initialisation (``visionsweep.pretrained: false``): what the weights are worth,
   on the same images, search space, trials and epochs;
3. ``scheduler/jobs/fashion_mnist_automode.yml``: AutoMode with the same budget (models and ranges chosen by
   visionsweep among the models whose weights it can have, weak trials stopped by ASHA);
then prints each leaderboard, what AutoMode chose, the time taken, and scores the best models on 100
held-out test images that no trial saw (chance: 0.10), the fine-tuned beside the from-scratch one; serves
the better run's ``best/`` package on Ray Serve behind a keyed endpoint and answers a real HTTP request.
4. ``scheduler/jobs/trees_detection.yml``: object detection, YOLOv5 small fine-tuned from the ultralytics COCO
   release weights (``yolov5s.pt`` in ``.weights``) on the bundled aerial tree tiles, beside the same sweep from
   random initialisation; both best detectors scored on the 20 validation tiles no trial saw (mAP), then the
   best detector's boxes for a held-out tile, printed and drawn over its ground truth.
Each run folder has a ``report.html`` (the detection run's shows its mAP curves).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from scheduler.controller import run_job
from scheduler.leaderboard import format_table
from scheduler.spec import load_job, parse_job
from serving.predictor import Predictor
from trainers import hyperparameters as hp
from trainers.data import load_records
from trainers.models.weights.sources import STORE_ENV

JOBS = Path(__file__).parent / "jobs"
ROOT = Path(__file__).parent.parent
HELD_OUT = ROOT / "trainers" / "sample_data" / "fashion_mnist" / "valid"
TREES_VALID = ROOT / "trainers" / "sample_data" / "trees" / "valid"  # the detection demo's held-out tiles
TREES_HELD_OUT_N = 20
YOLOV5_FILE = "yolov5s.pt"  # the ultralytics COCO release file make setup puts into .weights
WEIGHTS_STORE = ROOT / ".weights"  # make setup puts torchvision's MobileNetV2 ImageNet file here
CHANCE = 0.10  # 10 balanced classes


def held_out_accuracy(package: Path) -> tuple[int, int]:
    """(correct, images) of a classification package on the held-out Fashion-MNIST images."""
    predictor = Predictor(str(package), device="cpu")
    records = load_records(str(HELD_OUT), hp.MULTICLASS, "label")
    responses = predictor.predict_images([Path(r.image_url).read_bytes() for r in records])
    hits = sum(resp["labels"][max(range(len(resp["probs"])), key=resp["probs"].__getitem__)] == r.label
               for r, resp in zip(records, responses))
    return hits, len(records)


def _from_scratch(job):
    """The same job, every model from random initialisation (``visionsweep.pretrained: false``)."""
    import yaml


    doc = yaml.safe_load(job.text)
    doc.setdefault("visionsweep", {})["pretrained"] = False
    doc["visionsweep"].pop("tracking", None)
    doc["experiment_name"] = f"{doc.get('experiment_name', 'visionsweep-demo')}-from-scratch"
    return parse_job(yaml.safe_dump(doc, sort_keys=False), source=job.source)


def run_demo(output: str | None = None) -> int:
    if (WEIGHTS_STORE / "mobilenet_v2-b0353104.pth").is_file():
        os.environ.setdefault(STORE_ENV, str(WEIGHTS_STORE))
    t0 = time.time()
    root = Path(output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    results, scores = [], {}
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
            for m in plan.get("left_out", []):
                why = m["why"].split(" is in none of:")[0] + " is in no store or cache here, and no origin answered" \
                    if " is in none of:" in m["why"] else m["why"]
                print(f"AutoMode left out: {m['model_name']} ({why})")
        print(f"sweep time: {result.elapsed_s:.1f}s; report: {result.run_dir / 'report.html'}")
        results.append(result)
        scores[name] = held_out_accuracy(result.run_dir / "best")
        if name == "fashion_mnist_sweep.yml":
            print("\n== the same sweep from random initialisation (visionsweep.pretrained: false) ==", flush=True)
            scratch = run_job(_from_scratch(job), root / "fashion_mnist_from_scratch")
            print(format_table(scratch.rows, job.primary_metric))
            scores["from scratch"] = held_out_accuracy(scratch.run_dir / "best")
    result = max(results, key=lambda r: r.best_metric or 0.0)

    print("\n== held-out accuracy (100 test images no trial saw; chance 0.10) ==")
    for what, label in (("fashion_mnist_sweep.yml", "sweep, fine-tuned from the ImageNet MobileNetV2 weights"),
                        ("from scratch", "the same sweep (search space, trials, epochs) from random initialisation"),
                        ("fashion_mnist_automode.yml", "AutoMode, from pretrained weights")):
        hits, n = scores[what]
        print(f"{hits / n:.3f} ({hits}/{n})  {label}")
    _show_prediction(result.run_dir)
    records = _held_out_records()
    _serve_and_ask(result.run_dir, Path(records[1].image_url), records[1].label)
    _detection(root)
    print(f"\ntotal demo time: {time.time() - t0:.1f}s")
    return 0


def _held_out_records():
    return load_records(str(HELD_OUT), hp.MULTICLASS, "label")


def _show_prediction(run_dir: Path) -> None:
    print(f"\n== a prediction of the best model ({run_dir.name}/best) ==")
    records = _held_out_records()
    (first,) = Predictor(str(run_dir / "best"), device="cpu").predict_images([Path(records[0].image_url).read_bytes()])
    top = sorted(zip(first["probs"], first["labels"]), reverse=True)[:3]
    print(f"{Path(records[0].image_url).name} (true: {records[0].label}) -> top 3: "
          + ", ".join(f"{lab} {p:.3f}" for p, lab in top))
    print("response JSON (probs rounded): "
          + json.dumps({"probs": [round(p, 4) for p in first["probs"]], "labels": first["labels"]}))


def _detection(root: Path) -> None:
    """The tree detector: YOLOv5 small fine-tuned from the COCO release weights, the same job from random
    initialisation beside it, both scored on the validation tiles that no trial saw; the best detector's boxes
    printed and drawn over a held-out tile's ground truth."""
    from scheduler.holdout import score_package
    from serving.draw import canvas, draw_ground_truth, draw_response
    from trainers.data.images import read_image

    name = "trees_detection.yml"
    job = load_job(JOBS / name)
    weights = WEIGHTS_STORE / YOLOV5_FILE
    if not weights.is_file():
        print(f"\n== skipped {name}: {weights} is missing (make setup puts the ultralytics YOLOv5s COCO weights "
              "there) ==")
        return
    n = job.spec.limits.max_trials
    print(f"\n== visionsweep demo: {name} (object detection, {n} trial{'s' if n != 1 else ''} of "
          f"{job.training_parameters['model_name']} {job.training_parameters['model_size']} fine-tuned from "
          f"{YOLOV5_FILE}, COCO) ==", flush=True)
    result = run_job(job, root / Path(name).stem)
    print(f"\n== leaderboard: {name} ==")
    print(format_table(result.rows, job.primary_metric))
    print(f"sweep time: {result.elapsed_s:.1f}s; mAP curves per trial: {result.run_dir / 'report.html'}")
    print("\n== the same detection sweep from random initialisation (visionsweep.pretrained: false) ==", flush=True)
    scratch = run_job(_from_scratch(job), root / "trees_detection_from_scratch")
    print(format_table(scratch.rows, job.primary_metric))

    print(f"\n== held-out mAP ({TREES_HELD_OUT_N} validation tiles no trial saw; a detector that finds nothing "
          "scores 0) ==")
    scores = {}
    for what, run in (("fine-tuned from the YOLOv5s COCO weights", result), ("from random initialisation", scratch)):
        m = score_package(str(run.run_dir / "best"), str(TREES_VALID), metric_type="coco_voc")
        scores[what] = m
        print(f"{m['mean_average_precision']:.3f} mAP@0.5 (COCO 0.50:0.95: {m['coco_mean_average_precision']:.3f}; "
              f"recall {m['recall']:.2f}, precision {m['precision']:.2f} at box_score_threshold)  {what}")

    records = load_records(str(TREES_VALID), hp.DETECTION, "label")
    predictor = Predictor(str(result.run_dir / "best"), device="cpu")
    image = read_image(records[0].image_url)
    (resp,) = predictor.predict_images([image])
    boxes = resp["boxes"]
    drawn = result.run_dir / "predictions" / f"held_out_{Path(records[0].image_url).stem}.png"
    drawn.parent.mkdir(parents=True, exist_ok=True)
    truth = [{"label": b.label, "topX": b.top_x, "topY": b.top_y, "bottomX": b.bottom_x, "bottomY": b.bottom_y}
             for b in records[0].label]  # the JSONL's box objects, as the drawing reads them
    im = draw_ground_truth(canvas(image), truth)
    draw_response(image, resp, predictor.labels, im=im).save(drawn)
    print(f"{Path(records[0].image_url).name}: {len(records[0].label)} trees labelled, {len(boxes)} boxes predicted "
          f"at box_score_threshold {predictor.pkg.settings['box_score_threshold']}"
          + (f"; best: {json.dumps(boxes[0])}" if boxes else ""))
    print(f"drawn (ground truth dashed, predictions solid): {drawn}")


def _serve_and_ask(run_dir: Path, image: Path, label: str) -> None:
    """Serve the best model on Ray Serve with a keyed endpoint and answer one real HTTP request.

    The model is the version the sweep registered (``azureml:<name>:<version>`` in the run's MLflow registry),
    else the package folder ``RUN/best``."""
    import base64
    import os
    import socket
    import urllib.error
    import urllib.request

    from serving.connection import start_serve
    from serving.local import serve_package

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
        body = json.dumps({"input_data": {"columns": ["image"],
                                          "data": [base64.b64encode(image.read_bytes()).decode()]}})
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
        stop_serve()


def stop_serve(timeout_s: float = 30.0) -> None:
    """Serve down (every application, replica and proxy, then its controller), with nothing printed.

    ``serve.shutdown()`` asks the controller with a call that never returns (the controller ends itself with
    ``ray.kill`` once all else is gone) and Serve makes every controller call retry forever, so Ray's raylet
    prints "Task ServeController.graceful_shutdown failed. There are infinite retries remaining ... killed by
    `ray.kill`" on the terminal. The same request without retries ends, silently, when the controller does. It
    reaches into Serve's client: where that is not there (another Ray), Serve's own shutdown does it, printing."""
    import ray
    from ray import serve

    try:
        from ray.serve.context import _disconnect, _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        ask = client._controller.graceful_shutdown.options(max_task_retries=0) if client else None
    except (ImportError, AttributeError, TypeError):
        serve.shutdown()
        return
    if client is None:
        return
    client.shutdown_cached_handles()
    try:
        ray.get(ask.remote(), timeout=timeout_s)
    except ray.exceptions.RayActorError:
        pass  # the controller ended itself: Serve is down
    except ray.exceptions.GetTimeoutError:
        print(f"warning: Ray Serve did not shut down within {timeout_s:g}s (its controller's log says why)",
              file=sys.stderr)
    finally:
        _disconnect()

"""The GPU figures, in one run of a few minutes, for the day a GPU machine is at hand (issue 18). Every figure is
a ratio of two sides measured in this one command, on the same device:

1. **Input pipeline**: the classification trainer (``trainers.engine.train``, images read and augmented as in a
   job) against the loop a user writes (torchvision decode + v2 transforms, a DataLoader with workers, the same
   model and optimiser) and against the **ceiling**: the same model and step on synthetic tensors already on the
   device (how close the input pipeline keeps the device to its limit).
2. **AMP and channels_last** on and off (the trainer's ``Workers`` flags; they act on CUDA only).
3. **Data-parallel**: one trial on all the machine's GPUs (``distributed: true``, Ray Train) against one GPU
   (``distributed: false``), both through ``visionsweep run``; images/s per trial. Without CUDA: 2 CPU workers
   (``workers_per_node: 2``) against 1.
4. **A detection step**: the detector trainer against torchvision's reference loop on the same model and data.
5. **Serving**: requests/s through Ray Serve over HTTP (key auth, batching) against the same package called
   in-process.

Without CUDA it runs the same code at CPU sizes, says that CUDA is absent, and its ratios describe this CPU: it
runs here so that it cannot rot. Figures: the median of the timed epochs (the first epoch of a run is a warm-up).

    .venv/bin/python bench/gpu.py [--skip dp,serve]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine_info import describe  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# (model, crop, batch, epochs) per device: big enough to load a GPU, small enough for 2 CPU cores
CLS = ("resnet50", 224, 64, 3) if CUDA else ("resnet18", 64, 32, 2)
DET = ("fasterrcnn_resnet50_fpn", 512, 8, 3) if CUDA else ("fasterrcnn_resnet18_fpn", 256, 4, 2)


def _median_after_warmup(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


# ------------------------------------------------------------------------------------------ 1, 2: classification

def _cls_data():
    from classification_throughput import TRAIN_DIR

    from trainers.data import prepare_data

    return prepare_data("image_classification", "label", str(TRAIN_DIR), None, 0.2, 0)


def _cls_h(epochs: int):
    from classification_throughput import hyperparameters

    model, crop, batch, _ = CLS
    h = hyperparameters(model, crop, epochs)
    h["training_batch_size"] = batch
    return h


def trainer_rate(data, amp: bool = True, channels_last: bool = True) -> float:
    from trainers.engine import train
    from trainers.workers import Workers

    rates: dict[int, float] = {}
    train(_cls_h(CLS[3]), data, lambda m, _s: rates.__setitem__(m["epoch"], m["train_images_per_sec"]),
          device=DEV, workers=Workers(amp=amp, channels_last=channels_last))
    return _median_after_warmup([rates[e] for e in sorted(rates)])


def plain_rate(workers: int = 2) -> float:
    """The user's loop of ``classification_throughput.run_plain``, on this device."""
    from classification_throughput import run_plain

    return _median_after_warmup(run_plain(_cls_h(CLS[3]), workers, DEV))


def ceiling_rate(classes: int, steps: int = 30) -> float:
    """The same model and optimiser step on synthetic tensors already on the device, with the trainer's AMP and
    memory format: what the device does when the input costs nothing."""
    import torchvision

    from trainers.workers import Runtime, Workers

    model_name, crop, batch, _ = CLS
    rt = Runtime.of(torch.device(DEV), Workers())
    model = getattr(torchvision.models, model_name)(num_classes=classes).to(DEV)
    fmt = torch.channels_last if CUDA else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=rt.amp == torch.float16)
    x = torch.randn(batch, 3, crop, crop, device=DEV).to(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=DEV)

    def step():
        opt.zero_grad(set_to_none=True)
        with rt.autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    if CUDA:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if CUDA:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ 3: data-parallel

def dp_rate(workers: int, work: Path) -> float:
    """Images/s of one trial of ``workers`` data-parallel workers (GPUs, or CPU processes), via visionsweep run."""
    from classification_throughput import TRAIN_DIR

    from scheduler.controller import run_job
    from scheduler.runfolder import read_metrics
    from scheduler.spec import parse_job

    model, crop, batch, epochs = CLS
    dp = "distributed: true" if CUDA and workers > 1 else "distributed: false" if CUDA else ""
    per_node = "" if CUDA else f", workers_per_node: {workers}"
    cpus = 1 if CUDA else 0.9  # on 2 cores: two workers and the group's driver (0.1) must fit
    job = parse_job(f"""\
task: image_classification
target_column_name: label
training_data: {{path: {TRAIN_DIR}}}
limits: {{max_trials: 1, max_concurrent_trials: 1}}
training_parameters: {{model_name: {model}, number_of_epochs: {epochs}, training_batch_size: {batch},
  training_crop_size: {crop}, validation_resize_size: {crop}, validation_crop_size: {crop}, early_stopping: false
  {", " + dp if dp else ""}}}
visionsweep: {{pretrained: false, tracking: {{enabled: false}}, cpus_per_trial: {cpus}{per_node}}}
""", base_dir=work)
    result = run_job(job, work / f"dp{workers}", echo=lambda s: print("   ", s, file=sys.stderr))
    trial = next(p for p in (result.run_dir / "trials").iterdir() if p.is_dir())
    metrics = read_metrics(trial)
    return _median_after_warmup([m["train_images_per_sec"] for m in metrics])


# ------------------------------------------------------------------------------------------------ 4: detection

def detection_rates() -> tuple[float, float]:
    import detection_throughput as det

    from trainers.data import prepare_data
    from trainers.engine import train

    model, size, batch, epochs = DET
    det.BATCH = batch
    full = prepare_data(det.TASK, "label", str(det.TRAIN_DIR), None, 0.2, det.SEED)
    data = dataclasses.replace(full, train=full.train[:batch * 4], valid=full.valid[:2])
    h = det.hyperparameters(model, size, epochs)
    rates: dict[int, float] = {}
    train(h, data, lambda m, _s: rates.__setitem__(m["epoch"], m["train_images_per_sec"]), device=DEV)
    ours = _median_after_warmup([rates[e] for e in sorted(rates)])

    return ours, _median_after_warmup(det.run_plain(h, data, DEV))


# ------------------------------------------------------------------------------------------------- 5: serving

def serving_rates(seconds: float, concurrency: int) -> tuple[float, float]:
    import asyncio
    import socket

    import ray
    from ray import serve
    from serving_throughput import IMAGE, load, make_package

    from serving import endpoints
    from serving.predictor import Predictor
    from serving.specs import DeploymentSpec, EndpointSpec

    tmp = Path(tempfile.mkdtemp(prefix="vs-gpu-"))
    os.environ["VISIONSWEEP_HOME"] = str(tmp / "home")
    package = make_package(tmp)
    p = Predictor(str(package), device=DEV)
    imgs = [IMAGE.read_bytes()] * concurrency
    p.predict_images(imgs)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.predict_images(imgs)
        n += len(imgs)
    in_process = n / (time.perf_counter() - t0)
    del p
    if not ray.is_initialized():  # the data-parallel section's jobs may have started it
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        endpoints.create_endpoint(EndpointSpec(name="gpu"))
        endpoints.create_deployment(DeploymentSpec(
            name="main", endpoint_name="gpu", model=str(package), instance_type="gpu" if CUDA else "cpu",
            cpus_per_instance=1, batching={"max_batch_size": concurrency, "batch_wait_timeout_s": 0.005},
            request_settings={"max_concurrent_requests_per_instance": concurrency}))
        state = endpoints.set_traffic("gpu", {"main": 100})
        rps, _lat, errors = asyncio.run(load(f"http://127.0.0.1:{port}/gpu/score", state["keys"]["primary"],
                                             concurrency, seconds))
        assert errors == 0, f"{errors} failed requests"
    finally:
        serve.shutdown()
        ray.shutdown()
    return rps, in_process


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out: pipeline,amp,dp,det,serve")
    ap.add_argument("--serve-seconds", type=float, default=10)
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    gpus = torch.cuda.device_count()
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {describe('torch', 'ray')}")
    print(f"device:  {torch.cuda.get_device_name(0) + f' x {gpus}' if CUDA else 'CUDA absent: CPU sizes, CPU ratios'}")
    print(f"classification: {CLS[0]} {CLS[1]}px batch {CLS[2]}, {CLS[3]} epochs (first a warm-up); "
          f"detection: {DET[0]} {DET[1]}px batch {DET[2]}", flush=True)
    out: dict[str, float] = {}
    t_start = time.perf_counter()
    data = _cls_data() if not {"pipeline", "amp"} <= skip else None
    if "pipeline" not in skip:
        ours, plain, ceiling = trainer_rate(data), plain_rate(), ceiling_rate(len(data.classes))
        out.update(trainer=ours, plain=plain, ceiling=ceiling)
        print(f"1. trainer {ours:.1f} img/s, plain loop {plain:.1f}, synthetic ceiling {ceiling:.1f}: "
              f"trainer/plain {ours / plain:.2f}, trainer/ceiling {ours / ceiling:.2f}", flush=True)
    if "amp" not in skip:
        grid = {(amp, cl): trainer_rate(data, amp, cl) for amp in (True, False) for cl in (True, False)}
        base = grid[(True, True)]
        print("2. AMP / channels_last (img/s, ratio to both on): " + ", ".join(
            f"amp {'on' if amp else 'off'} cl {'on' if cl else 'off'} {r:.1f} ({r / base:.2f})"
            for (amp, cl), r in grid.items()) + ("" if CUDA else "  [CUDA absent: both act on CUDA only]"),
            flush=True)
    if "dp" not in skip:
        n = gpus if CUDA else 2
        if CUDA and gpus < 2:
            print("3. data-parallel: one GPU only; nothing to compare", flush=True)
        else:
            with tempfile.TemporaryDirectory(prefix="vs-gpu-dp-") as d:
                one, many = dp_rate(1, Path(d)), dp_rate(n, Path(d))
            print(f"3. data-parallel: {n} {'GPUs' if CUDA else 'CPU workers'} {many:.1f} img/s vs 1: {one:.1f}: "
                  f"{many / one:.2f}x (ideal {n}x)", flush=True)
    if "det" not in skip:
        ours, plain = detection_rates()
        print(f"4. detection step: trainer {ours:.2f} img/s, torchvision reference loop {plain:.2f}: "
              f"{ours / plain:.2f}", flush=True)
    if "serve" not in skip:
        rps, ips = serving_rates(a.serve_seconds, 8)
        print(f"5. serving (concurrency 8, batching): HTTP {rps:.1f} req/s, in-process {ips:.1f} img/s: "
              f"{rps / ips:.2f}", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({k: round(v, 2) for k, v in out.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

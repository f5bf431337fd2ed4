"""Served classification model over HTTP vs the same model called in-process (issue 4).

A ResNet-18 model package at 224x224 (10 classes) is served by a keyed endpoint on Ray Serve (router +
one model deployment, 1 replica) on this machine; an asyncio load generator (aiohttp) keeps C requests
in flight for a fixed time and records each request's latency. The baseline calls
``Predictor.predict_images`` in-process on the same images, with the batch size the server can form at
that concurrency (min(C, max_batch_size) with batching, 1 without). Both sides run in one command;
the load generator shares the 2 cores with the server, which the baseline does not pay.

    .venv/bin/python bench/serving_throughput.py [--seconds 8] [--concurrency 1 4 8]

Targets: with batching, HTTP throughput >= 0.8x in-process; p99 <= 2x p50 below saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from machine_info import describe

IMAGE = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "fashion_mnist" / "images" / "test_0000.png"


def make_package(root: Path) -> Path:
    import torch

    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models import build_model
    from trainers.package import save_package

    torch.manual_seed(0)
    h = resolve_hyperparameters("image_classification", {"model_name": "resnet18"}, {})
    model = build_model("resnet18", 10, 224)
    return save_package(root / "pkg", model=model, task="image_classification", classes=[f"c{i}" for i in range(10)],
                        hyperparameters=h, metrics={})


def in_process(package: Path, batch: int, seconds: float) -> float:
    from serving.predictor import Predictor

    p = Predictor(str(package), device="cpu")
    imgs = [IMAGE.read_bytes()] * batch
    p.predict_images(imgs)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.predict_images(imgs)
        n += batch
    return n / (time.perf_counter() - t0)


async def load(url: str, key: str, concurrency: int, seconds: float) -> tuple[float, list[float], int]:
    import aiohttp

    body = json.dumps({"input_data": {"columns": ["image"], "data": [base64.b64encode(IMAGE.read_bytes()).decode()]}})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(session):
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        for _ in range(concurrency):  # warm-up
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return len(lat) / elapsed, lat, errors


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5)
    args = ap.parse_args()

    import ray
    from ray import serve

    from serving import endpoints
    from serving.specs import DeploymentSpec, EndpointSpec

    tmp = Path(tempfile.mkdtemp(prefix="vs-bench-"))
    os.environ["VISIONSWEEP_HOME"] = str(tmp / "home")
    package = make_package(tmp)
    print(f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {describe('torch', 'ray')}")
    print(f"model: resnet18 224x224, 10 classes; {args.seconds:g}s per point; load generator on the same machine")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    endpoints.create_endpoint(EndpointSpec(name="bench"))
    rows = []
    for batching in (True, False):
        mbs = args.max_batch_size if batching else 1
        endpoints.create_deployment(DeploymentSpec(
            # the replica gets the machine's cores (minus a little for the router), like the in-process side
            name="main", endpoint_name="bench", model=str(package), cpus_per_instance=os.cpu_count() - 0.2,
            batching={"max_batch_size": mbs, "batch_wait_timeout_s": args.batch_wait_ms / 1000 if batching else 0.0},
            request_settings={"max_concurrent_requests_per_instance": max(args.concurrency)}),
            update=not batching)
        state = endpoints.set_traffic("bench", {"main": 100})
        url, key = f"http://127.0.0.1:{port}/bench/score", state["keys"]["primary"]
        for c in args.concurrency:
            server = serve.get_deployment_handle("bench-main", app_name="bench")
            before = server.stats.remote().result()
            rps, lat, errors = asyncio.run(load(url, key, c, args.seconds))
            after = server.stats.remote().result()
            mean_batch = (after["predicted"] - before["predicted"]) / max(1, after["batches"] - before["batches"])
            base = in_process(package, min(c, mbs), args.seconds)
            rows.append((batching, c, rps, base, pct(lat, 0.5), pct(lat, 0.99), errors))
            print(f"  batching {'on ' if batching else 'off'} c={c}: {rps:.1f} req/s over HTTP, {base:.1f} img/s "
                  f"in-process, p50 {rows[-1][4]:.0f} ms, p99 {rows[-1][5]:.0f} ms, errors {errors}, mean batch {mean_batch:.1f}", flush=True)
    serve.shutdown()
    ray.shutdown()
    print("\n| batching | concurrency | HTTP req/s | in-process img/s | HTTP / in-process | p50 ms | p99 ms | p99/p50 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, c, rps, base, p50, p99, err in rows:
        print(f"| {'on' if b else 'off'} | {c} | {rps:.1f} | {base:.1f} | {rps / base:.2f} | {p50:.0f} | {p99:.0f} | "
              f"{p99 / p50:.2f} | {err} |")
    on = [r for r in rows if r[0]]
    print(f"\nbest HTTP/in-process with batching: {max(r[2] / r[3] for r in on):.2f} (target >= 0.8); "
          f"p99/p50 at concurrency {min(r[1] for r in on)}: {on[0][5] / on[0][4]:.2f} (target <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

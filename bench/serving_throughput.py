"""Served classification model over HTTP vs the same model called in-process (issue 4).

A ResNet-18 model package at 224x224 (10 classes) is served by a keyed endpoint on Ray Serve (router +
one model deployment, 1 replica) on this machine; an asyncio load generator (aiohttp) keeps C requests
in flight for a fixed time and records each request's latency. The baseline calls
``Predictor.predict_images`` in-process on the same images, with the batch size the server can form at
that concurrency (min(C, max_batch_size) with batching, 1 without). Both sides run in one command;
the load generator shares the 2 cores with the server, which the baseline does not pay.

    .venv/bin/python bench/serving_throughput.py [--seconds 5] [--repeats 3] [--concurrency 1 4 8]
        [--runtimes pytorch onnx] [--batching on off]

Targets: with batching, HTTP throughput >= 0.8x in-process; p99 <= 2x p50 below saturation.

Each ``--runtimes`` entry is a deployment ``runtime`` (``serving.onnx_runtime``): the replica and the in-process
baseline run the same runtime (``onnx``: the package's graph exported at start, under onnxruntime), so each ratio
compares Serve with the same model code in-process. The Serve path's own cost per request is printed per runtime:
at concurrency 1, the HTTP p50 latency minus the in-process time of one image, and the CPU-ms per request spent
outside the model replica.

A second table says where the CPU goes (the "router" column of the floor line is the no-op replica):
CPU-milliseconds per served request of each process (model replica, router, Serve's HTTP proxy, the load generator,
the rest of Ray), read from /proc, next to the CPU-milliseconds per image of the in-process baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from machine_info import describe

IMAGE = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "fashion_mnist" / "images" / "test_0000.png"


def make_package(root: Path) -> Path:
    import torch

    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.classifiers import build_model
    from trainers.package import save_package

    torch.manual_seed(0)
    h = resolve_hyperparameters("image_classification", {"model_name": "resnet18"}, {})
    model = build_model("resnet18", 10, 224)
    return save_package(root / "pkg", model=model, task="image_classification", classes=[f"c{i}" for i in range(10)],
                        hyperparameters=h, metrics={})


_PREDICTORS: dict[str, object] = {}  # one per runtime: an ONNX one exports its graph when it starts


def in_process(package: Path, batch: int, seconds: float, threads: int,
               runtime: str = "pytorch") -> tuple[float, float]:
    """(images/s, CPU-ms per image) of the package called in this process with ``threads`` torch (and
    onnxruntime) threads, on the deployment ``runtime``'s predictor."""
    import torch

    from serving.onnx_runtime import make_predictor

    torch.set_num_threads(threads)
    if runtime not in _PREDICTORS:
        _PREDICTORS[runtime] = make_predictor(str(package), runtime, threads=threads)
    p = _PREDICTORS[runtime]
    imgs = [IMAGE.read_bytes()] * batch
    p.predict_images(imgs)  # warm-up
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        p.predict_images(imgs)
        n += batch
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1000


PARTS = ("model replica", "router", "HTTP proxy", "load generator", "rest of Ray")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU time (user + system) of every process on the machine, by pid, with the part it plays (Linux /proc)."""
    tick, me, out = os.sysconf("SC_CLK_TCK"), os.getpid(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        part = ("load generator" if int(pid) == me else "HTTP proxy" if "ProxyActor" in cmd
                else "router" if "bench-router" in cmd or "bench-floor" in cmd
                else "model replica" if "bench-main" in cmd
                else "rest of Ray" if "ray" in cmd else None)
        if part:
            out[int(pid)] = (part, (int(fields[11]) + int(fields[12])) / tick)
    return out


def serve_floor(port: int, seconds: float, concurrency: int = 4) -> tuple[float, dict[str, float]]:
    """Ray Serve's own cost on this machine: the same requests to a no-op ingress (proxy + one replica hop)."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(name="bench-floor", ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def __call__(self, request):
            return JSONResponse([{"bytes": len(await request.body())}])

    serve.run(Echo.bind(), name="floor", route_prefix="/floor")
    cpu0 = cpu_seconds()
    rps, lat, _ = asyncio.run(load(f"http://127.0.0.1:{port}/floor", "-", concurrency, seconds))
    cpu = cpu_per_request(cpu0, cpu_seconds(), len(lat))
    serve.delete("floor")
    return rps, cpu


def cpu_per_request(before: dict, after: dict, n: int) -> dict[str, float]:
    per = dict.fromkeys(PARTS, 0.0)
    for pid, (part, t) in after.items():
        per[part] += (t - before.get(pid, (part, 0.0))[1]) / max(n, 1) * 1000
    return per


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
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5)
    ap.add_argument("--model-cores", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="cores (torch threads) for the model on both sides; the rest run the proxy, the router "
                         "and the load generator")
    ap.add_argument("--runtimes", nargs="+", default=["pytorch", "onnx"], choices=("pytorch", "onnx"),
                    help="deployment runtimes to measure, each against the same runtime in-process")
    ap.add_argument("--batching", nargs="+", default=["on", "off"], choices=("on", "off"))
    args = ap.parse_args()

    import ray
    from ray import serve

    from serving import endpoints
    from serving.specs import DeploymentSpec, EndpointSpec

    tmp = Path(tempfile.mkdtemp(prefix="vs-bench-"))
    os.environ["VISIONSWEEP_HOME"] = str(tmp / "home")
    package = make_package(tmp)
    print(f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {describe('torch', 'ray')}")
    print(f"model: resnet18 224x224, 10 classes; {args.seconds:g}s per point; {args.model_cores} of "
          f"{os.cpu_count()} cores run the model on both sides; load generator on the same machine")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    floor_rps, floor_cpu = serve_floor(port, args.seconds)
    print(f"  Serve floor (proxy + no-op ingress replica, c=4): {floor_rps:.1f} req/s, CPU-ms per request: "
          + ", ".join(f"{k} {v:.1f}" for k, v in floor_cpu.items() if v), flush=True)
    endpoints.create_endpoint(EndpointSpec(name="bench"))
    rows = []
    modes = [(rt, b == "on") for rt in args.runtimes for b in args.batching]
    for runtime, batching in modes:
        mbs = args.max_batch_size if batching else 1
        endpoints.create_deployment(DeploymentSpec(
            # the model gets the same cores on both sides; the serving stack needs cores of its own
            name="main", endpoint_name="bench", model=str(package), cpus_per_instance=args.model_cores,
            runtime=runtime,
            batching={"max_batch_size": mbs, "batch_wait_timeout_s": args.batch_wait_ms / 1000 if batching else 0.0},
            request_settings={"max_concurrent_requests_per_instance": max(args.concurrency)}),
            update=(runtime, batching) != modes[0])
        state = endpoints.set_traffic("bench", {"main": 100})
        url, key = f"http://127.0.0.1:{port}/bench/score", state["keys"]["primary"]
        for c in args.concurrency:
            # HTTP and in-process alternate, ``--repeats`` times; each column is the median of its repeats
            server = serve.get_deployment_handle("bench-main", app_name="bench")
            http, base, lats, errors, batch, cpus, base_cpus = [], [], [], 0, [], [], []
            for _ in range(args.repeats):
                before, cpu0 = server.stats.remote().result(), cpu_seconds()
                rps, lat, err = asyncio.run(load(url, key, c, args.seconds))
                cpus.append(cpu_per_request(cpu0, cpu_seconds(), len(lat)))
                after = server.stats.remote().result()
                batch.append((after["predicted"] - before["predicted"]) / max(1, after["batches"] - before["batches"]))
                http.append(rps)
                lats += lat
                errors += err
                ips, ipc = in_process(package, min(c, mbs), args.seconds, args.model_cores, runtime)
                base.append(ips)
                base_cpus.append(ipc)
            cpu = {p: statistics.median(x[p] for x in cpus) for p in PARTS}
            rows.append((runtime, batching, c, statistics.median(http), statistics.median(base), pct(lats, 0.5),
                         pct(lats, 0.99), errors, statistics.median(batch), cpu, statistics.median(base_cpus),
                         statistics.median(h / b for h, b in zip(http, base))))
            print(f"  {runtime} batching {'on ' if batching else 'off'} c={c}: HTTP req/s "
                  f"{' '.join(f'{x:.1f}' for x in http)}, in-process img/s {' '.join(f'{x:.1f}' for x in base)}, "
                  f"p50 {rows[-1][5]:.0f} ms, p99 {rows[-1][6]:.0f} ms, errors {errors}, mean batch "
                  f"{rows[-1][8]:.1f}", flush=True)
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n| runtime | batching | concurrency | HTTP req/s | in-process img/s | HTTP / in-process "
          "| p50 ms | p99 ms | p99/p50 | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rt, b, c, rps, base, p50, p99, err, *_, ratio in rows:
        print(f"| {rt} | {'on' if b else 'off'} | {c} | {rps:.1f} | {base:.1f} | {ratio:.2f} | {p50:.0f} | "
              f"{p99:.0f} | {p99 / p50:.2f} | {err} |")
    # Where the CPU goes: per served request, by process, against the in-process CPU per image.
    print("\n| runtime | batching | concurrency | mean batch | " + " | ".join(PARTS) + " | total | in-process |")
    print("|---|---|---:|---:|" + "---:|" * (len(PARTS) + 2))
    for rt, b, c, *_, mean_batch, cpu, base_cpu, _ratio in rows:
        print(f"| {rt} | {'on' if b else 'off'} | {c} | {mean_batch:.1f} | "
              + " | ".join(f"{cpu[p]:.1f}" for p in PARTS) + f" | {sum(cpu.values()):.1f} | {base_cpu:.1f} |")
    print()
    for rt in args.runtimes:
        mine = [r for r in rows if r[0] == rt]
        on = [r for r in mine if r[1]]
        if on:
            print(f"{rt}: best HTTP/in-process with batching: {max(r[-1] for r in on):.2f} (target >= 0.8); "
                  f"p99/p50 at concurrency {on[0][2]}: {on[0][6] / on[0][5]:.2f} (target <= 2)")
        # the Serve path's own cost per request: one request at a time, against one image in-process
        one = min(mine, key=lambda r: (r[2], r[1]))  # the lowest concurrency, batching off where measured
        rt_, b, c, rps, base, p50, *_, cpu, _base_cpu, _ratio = one
        outside = sum(v for k, v in cpu.items() if k not in ("model replica", "load generator"))
        print(f"{rt}: Serve overhead per request (c={c}, batching {'on' if b else 'off'}): p50 {p50:.1f} ms - "
              f"in-process {1000 / base:.1f} ms per image = {p50 - 1000 / base:.1f} ms; CPU-ms per request "
              f"outside the model replica (router, proxy, rest of Ray): {outside:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

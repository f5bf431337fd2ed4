"""Images/s delivered to the training loop from local disk, Azurite and moto S3, cold and warm node cache (issue 8).

Every side iterates the same ``torch.utils.data.DataLoader`` over ``trainers.data.datasets.ImageDataset`` with
the training transform (``trainers.transforms.train_transform``), batch 32, shuffle, ``num_workers`` 0 (the
trainer's default: ``ImageDataset.__getitems__`` reads a batch's images on 16 threads), over the same images,
decoded by the same ``decode_image``. One epoch is every image once; its rate is images / (end of the epoch -
first batch request). The loop body only counts the batch: no model, so this is the data path alone.

* ``local``: the images' local paths (``ImageStore`` reads them directly; the OS page cache holds them).
* ``azurite cold`` / ``s3 cold``: ``az://`` / ``s3://`` URLs of the same files uploaded to a real local Azurite /
  moto_server (``tests.storage_servers``), read through a fresh, empty node cache (``NodeCache``): every read is
  a miss that fetches the object and stores it (the streaming mode of SPEC 11.2).
* ``azurite warm`` / ``s3 warm``: the same URLs through a node cache already filled (``ImageStore.materialize``):
  every read is a hit, a local file read.

After an untimed warm-up epoch of every side (imports, the storage clients' connection pools, page cache), the
sides run ``--repeats`` times in rotated order; the figure is the median. Ratios are to ``local`` (targets from
issue 8: warm >= 0.9x local, cold >= 0.5x local).

Then two concurrent "trials": two processes, one torch thread each, read the same dataset through the same node
cache folder at the same time (started together behind a barrier), one epoch each. Reported: images/s per trial
(mean of the two), both together, and storage requests per image = the two processes' ``NodeCache.stats()
['fetches']`` summed / images (each fetch is one ``storage.read_bytes``). The trainer shuffles with
``random_seed`` (default 0) in every trial, so trials of one sweep read in the same order ("same order"); a
variant gives the two trials different seeds. "fill" is the non-streaming default: each trial first calls
``ImageStore.materialize`` (one download per node under a file lock), then trains warm.

Datasets: ``png28``: the bundled Fashion-MNIST sample (``trainers/sample_data/fashion_mnist/images``, 28x28
grey PNGs, ~0.5 KB), training crop 28; ``jpeg224``: the same images upscaled (bicubic) to 224x224 RGB JPEGs at
quality 90 (~5.5 KB) in a temp folder, training crop 224.

    .venv/bin/python bench/storage_throughput.py [--images 500] [--repeats 3] [--datasets png28,jpeg224]
                                                 [--concurrent-repeats 2] [--no-concurrent]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.storage_servers (the repo root is not on the venv's path)
sys.path.insert(0, str(ROOT / "bench"))

from machine_info import describe  # noqa: E402

SAMPLE = ROOT / "trainers" / "sample_data" / "fashion_mnist" / "images"
BATCH = 32
CACHE_BYTES = 2**30
STORE = "bench"  # Azurite container / S3 bucket
TARGETS = {"warm": 0.9, "cold": 0.5}


# ----------------------------------------------------------------------------------------------- CPU time

def own_cpu_s() -> float:
    """CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (from /proc; 0 for processes gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats, children = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rfind(")") + 2:].split()
        stats[int(entry)] = (int(f[11]) + int(f[12])) / tick
        children.setdefault(int(f[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += children.get(p, [])
    return total


# ----------------------------------------------------------------------------------------------- one epoch

def _records(urls: list[str]):
    from trainers.data.tables import Record

    # labels are not what is measured: 10 classes by position, like the sample
    return [Record(image_url=u, label=str(i % 10), source=f"bench:{i + 1}") for i, u in enumerate(urls)]


def epoch(urls: list[str], crop: int, cache_dir: str | None, seed: int) -> tuple[float, dict]:
    """One epoch over ``urls``: (images/s, this epoch's NodeCache counters; {} without a cache)."""
    import torch
    from torch.utils.data import DataLoader

    from trainers.data.datasets import ImageDataset
    from trainers.data.images import ImageStore
    from trainers.tasks import make_task
    from trainers.tasks.classification import ClassificationSample
    from trainers.transforms import train_transform

    store = ImageStore(cache_dir=cache_dir, cache_max_bytes=CACHE_BYTES if cache_dir else 0, stream=True)
    records = _records(urls)
    task = make_task("image_classification", sorted({r.label for r in records}))
    ds = ImageDataset(records, ClassificationSample(task, train_transform(crop)), store)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=False, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    cache = store.cache()
    before = cache.stats() if cache else {}
    seen = 0
    t0 = time.perf_counter()
    for x, _y in loader:
        seen += len(x)
    rate = seen / (time.perf_counter() - t0)
    after = cache.stats() if cache else {}
    counts = {k: after[k] - before[k] for k in ("hits", "misses", "fetches", "evictions")} if cache else {}
    assert seen == len(urls), (seen, len(urls))
    return rate, counts


def fill(urls: list[str], cache_dir: str) -> tuple[float, int]:
    """``ImageStore.materialize`` (the non-streaming download); (seconds, fetches of this process)."""
    from trainers.data.images import ImageStore

    store = ImageStore(cache_dir=cache_dir, cache_max_bytes=CACHE_BYTES, stream=False)
    cache = store.cache()
    before = cache.stats()["fetches"]
    t0 = time.perf_counter()
    store.materialize(urls)
    return time.perf_counter() - t0, cache.stats()["fetches"] - before


# ----------------------------------------------------------------------------------------------- trial processes

def _trial_process(conn, barrier, threads: int) -> None:
    """A concurrent "trial": runs the epochs the parent sends, started together with its sibling."""
    import torch

    torch.set_num_threads(threads)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            barrier.wait(timeout=120)
            t_start, cpu0 = time.time(), own_cpu_s()
            fill_s, fill_fetches = fill(job["urls"], job["cache_dir"]) if job.get("fill") else (0.0, 0)
            t_epoch = time.time()
            rate, counts = epoch(job["urls"], job["crop"], job["cache_dir"], job["seed"])
            conn.send(dict(rate=rate, counts=counts, fill_s=fill_s, fill_fetches=fill_fetches, start=t_start,
                           epoch_start=t_epoch, end=time.time(), cpu_s=own_cpu_s() - cpu0))
        except Exception as e:  # report, keep serving
            conn.send(dict(error=f"{type(e).__name__}: {e}"))


class Trials:
    """Two long-lived trial processes (spawned once: importing torch costs seconds)."""

    def __init__(self, threads: int = 1, n: int = 2):
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(n)
        self.conns, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_trial_process, args=(child, self.barrier, threads), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, jobs: list[dict]) -> list[dict]:
        for c, j in zip(self.conns, jobs):
            c.send(j)
        out = [c.recv() for c in self.conns]
        for o in out:
            if "error" in o:
                raise RuntimeError(f"trial process failed: {o['error']}")
        return out

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


# ----------------------------------------------------------------------------------------------- data

def make_datasets(tmp: Path, names: list[str], n: int) -> dict[str, tuple[Path, list[Path], int]]:
    """name -> (folder, image files, training crop)."""
    from PIL import Image

    pngs = sorted(SAMPLE.glob("*.png"))[:n]
    out = {}
    if "png28" in names:
        out["png28"] = (SAMPLE, pngs, 28)
    if "jpeg224" in names:
        d = tmp / "jpeg224"
        d.mkdir(parents=True)
        files = []
        for p in pngs:
            img = Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)
            f = d / (p.stem + ".jpg")
            img.save(f, "JPEG", quality=90)
            files.append(f)
        out["jpeg224"] = (d, files, 224)
    return out


def _mean_size(files: list[Path]) -> float:
    return statistics.mean(f.stat().st_size for f in files)


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="images per dataset (the sample has 500)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--datasets", default="png28,jpeg224")
    ap.add_argument("--concurrent-repeats", type=int, default=2)
    ap.add_argument("--no-concurrent", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads of the single-process sides (a trial gets cpus_per_trial, default 1)")
    args = ap.parse_args()

    import torch

    from tests.storage_servers import azurite_server, moto_s3_server

    torch.set_num_threads(args.torch_threads)
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC   load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {describe('torch', 'adlfs', 's3fs')}")
    tmp = Path(tempfile.mkdtemp(prefix="vs-storage-bench-"))
    caches = tmp / "caches"
    trials = None
    try:
        datasets = make_datasets(tmp, args.datasets.split(","), args.images)
        with azurite_server(tmp / "azurite") as az, moto_s3_server(tmp / "moto") as s3, az.env(), s3.env():
            az.create(STORE)
            s3.create(STORE)
            sides: dict[str, dict[str, list[str]]] = {}
            for name, (folder, files, crop) in datasets.items():
                for f in files:
                    data = f.read_bytes()
                    az.put(STORE, f"{name}/{f.name}", data)
                    s3.put(STORE, f"{name}/{f.name}", data)
                sides[name] = {"local": [str(f) for f in files],
                               "azurite": [az.url(STORE, f"{name}/{f.name}") for f in files],
                               "s3": [s3.url(STORE, f"{name}/{f.name}") for f in files]}
            print(f"servers: Azurite {az.endpoint} (pid {az.pid}), moto_server {s3.endpoint} (pid {s3.pid}); "
                  f"both on this machine, sharing its cores")
            print(f"setup:   batch {BATCH}, DataLoader num_workers 0 (reads on 16 threads per batch), training "
                  f"transform, {args.repeats} repeats (median), {args.torch_threads} torch thread(s); datasets: "
                  + "; ".join(f"{n} {len(f)} images, mean {_mean_size(f) / 1024:.1f} KB, crop {c}"
                              for n, (_, f, c) in datasets.items()))
            print()
            pids = {"azurite": az.pid, "s3": s3.pid}
            results = {}
            for name, (_, files, crop) in datasets.items():
                results[name] = single(name, sides[name], crop, caches, args.repeats, pids)
            print()
            for name in datasets:
                print_single(name, len(datasets[name][1]), results[name])
            if not args.no_concurrent:
                trials = Trials(threads=1)
                conc = {}
                for name, (_, files, crop) in datasets.items():
                    conc[name] = concurrent(trials, name, sides[name], crop, caches, args.concurrent_repeats, pids)
                print()
                for name in datasets:
                    print_concurrent(name, len(datasets[name][1]), conc[name])
    finally:
        if trials is not None:
            trials.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"done {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC, load average (1/5/15 min) "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


def _fresh(caches: Path, tag: str) -> str:
    caches.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{tag}-", dir=caches)


def single(name: str, urls: dict[str, list[str]], crop: int, caches: Path, repeats: int,
           pids: dict[str, int]) -> dict:
    """side -> {"rates": [...], "counts": [...], "cpu": [(client s, server s)]} for one dataset, one process."""
    plan = ["local", "azurite cold", "azurite warm", "s3 cold", "s3 warm"]
    warm_dirs = {}
    for backend in ("azurite", "s3"):
        warm_dirs[backend] = _fresh(caches, f"{name}-{backend}-warm")
        fill(urls[backend], warm_dirs[backend])  # untimed: the warm sides' cache is full before they start

    def run(side: str) -> tuple[float, dict, tuple[float, float]]:
        backend, _, state = side.partition(" ")
        cache_dir = None
        if backend != "local":
            cache_dir = warm_dirs[backend] if state == "warm" else _fresh(caches, f"{name}-{backend}-cold")
        server = pids.get(backend)
        c0, s0 = own_cpu_s(), tree_cpu_s(server) if server else 0.0
        rate, counts = epoch(urls[backend], crop, cache_dir, 0)
        return rate, counts, (own_cpu_s() - c0, (tree_cpu_s(server) - s0) if server else 0.0)

    for side in plan:  # untimed warm-up: imports, connection pools, page caches
        run(side)
    out = {s: {"rates": [], "counts": [], "cpu": []} for s in plan}
    for r in range(repeats):
        order = plan[r % len(plan):] + plan[:r % len(plan)]  # rotate, so no side always runs first
        for side in order:
            rate, counts, cpu = run(side)
            out[side]["rates"].append(rate)
            out[side]["counts"].append(counts)
            out[side]["cpu"].append(cpu)
            extra = f"  (fetches {counts['fetches']}, hits {counts['hits']})" if counts else ""
            extra += f"  CPU s: this process {cpu[0]:.2f}, server {cpu[1]:.2f}"
            print(f"  {name:<8} repeat {r + 1} {side:<13} {rate:7.1f} img/s{extra}", flush=True)
    return out


def print_single(name: str, n: int, res: dict) -> None:
    local = statistics.median(res["local"]["rates"])
    print(f"{name}: one process, {n} images per epoch")
    print()
    print("| side | " + " | ".join(f"repeat {i + 1}" for i in range(len(res["local"]["rates"])))
          + " | median img/s | / local | target | fetches per image | CPU ms/img: loader | CPU ms/img: server |")
    print("|---|" + "---:|" * len(res["local"]["rates"]) + "---:|---:|---|---:|---:|---:|")
    for side, v in res.items():
        med = statistics.median(v["rates"])
        state = side.split(" ")[-1]
        target = TARGETS.get(state)
        verdict = "" if target is None else f">= {target} {'PASS' if med / local >= target else 'MISS'}"
        fpi = "" if not v["counts"][0] else f"{statistics.median(c['fetches'] for c in v['counts']) / n:.2f}"
        client = statistics.median(c for c, _ in v["cpu"]) * 1000 / n
        server = "" if side == "local" else f"{statistics.median(x for _, x in v['cpu']) * 1000 / n:.2f}"
        print(f"| {side} | " + " | ".join(f"{x:.1f}" for x in v["rates"])
              + f" | {med:.1f} | {med / local:.2f} | {verdict} | {fpi} | {client:.2f} | {server} |")
    print()


def concurrent(trials: Trials, name: str, urls: dict[str, list[str]], crop: int, caches: Path,
               repeats: int, pids: dict[str, int]) -> dict:
    """case -> list of per-repeat dicts (per-trial rates, together, fetches, fill seconds)."""
    plan = [("local", "local", None, (0, 0), False),
            ("azurite cold, same order", "azurite", "cold", (0, 0), False),
            ("azurite cold, different orders", "azurite", "cold", (0, 1), False),
            ("azurite warm", "azurite", "warm", (0, 0), False),
            ("azurite fill, then epoch", "azurite", "cold", (0, 0), True),
            ("s3 cold, same order", "s3", "cold", (0, 0), False),
            ("s3 warm", "s3", "warm", (0, 0), False)]
    warm = {b: _fresh(caches, f"c-{name}-{b}-warm") for b in ("azurite", "s3")}
    for b, d in warm.items():
        fill(urls[b], d)

    def jobs(backend, state, seeds, do_fill):
        cache_dir = None if backend == "local" else (warm[backend] if state == "warm"
                                                    else _fresh(caches, f"c-{name}-{backend}-cold"))
        return [dict(urls=urls[backend], crop=crop, cache_dir=cache_dir, seed=s, fill=do_fill) for s in seeds]

    for backend in ("local", "azurite", "s3"):  # untimed warm-up of both processes (imports, connection pools)
        trials.run(jobs(backend, "cold", (0, 0), False))
    out = {case: [] for case, *_ in plan}
    n = len(urls["local"])
    for r in range(repeats):
        order = plan[r % len(plan):] + plan[:r % len(plan)]
        for case, backend, state, seeds, do_fill in order:
            server = pids.get(backend)
            s0 = tree_cpu_s(server) if server else 0.0
            res = trials.run(jobs(backend, state, seeds, do_fill))
            server_s = (tree_cpu_s(server) - s0) if server else 0.0
            together = len(res) * n / (max(x["end"] for x in res) - min(x["epoch_start"] for x in res))
            fetches = sum(x["counts"].get("fetches", 0) + x["fill_fetches"] for x in res)
            row = dict(per_trial=[x["rate"] for x in res], together=together, fetches=fetches,
                       fill_s=max(x["fill_s"] for x in res), client_s=sum(x["cpu_s"] for x in res), server_s=server_s)
            out[case].append(row)
            fill_txt = f", fill {row['fill_s']:.2f}s" if do_fill else ""
            print(f"  {name:<8} repeat {r + 1} 2 trials {case:<31} per trial "
                  + " / ".join(f"{x:.1f}" for x in row["per_trial"])
                  + f" img/s, together {together:.1f} img/s, fetches {fetches}{fill_txt}, CPU s: trials "
                  f"{row['client_s']:.2f}, server {server_s:.2f}", flush=True)
    return out


def print_concurrent(name: str, n: int, res: dict) -> None:
    local = statistics.median(statistics.mean(r["per_trial"]) for r in res["local"])
    print(f"{name}: 2 concurrent trials (processes, 1 torch thread each) on one node cache, {n} images each")
    print()
    print("| case | img/s per trial (median) | / local | both together img/s | storage requests per image "
          "(both trials) | fill s | CPU ms/img: trials | CPU ms/img: server |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, rows in res.items():
        per = statistics.median(statistics.mean(r["per_trial"]) for r in rows)
        tog = statistics.median(r["together"] for r in rows)
        fpi = statistics.median(r["fetches"] for r in rows) / n
        fill_s = statistics.median(r["fill_s"] for r in rows)
        client = statistics.median(r["client_s"] for r in rows) * 1000 / (2 * n)
        server = statistics.median(r["server_s"] for r in rows) * 1000 / (2 * n)
        print(f"| {case} | {per:.1f} | {per / local:.2f} | {tog:.1f} | "
              f"{'' if case == 'local' else f'{fpi:.2f}'} | {f'{fill_s:.2f}' if 'fill' in case else ''} | "
              f"{client:.2f} | {'' if case == 'local' else f'{server:.2f}'} |")
    print()


if __name__ == "__main__":
    raise SystemExit(main())

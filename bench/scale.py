"""How visionsweep's costs grow with the data (issue 18, "Scale"): each table prints cost per unit of work as the
work grows, so that growth faster than the work shows as a rising column.

* ``data-prep``: ``trainers.data.prepare.prepare_data`` (JSONL parsing and validation, the split, the image check,
  the class list) plus writing the run's ``data/train.jsonl`` / ``valid.jsonl`` as the controller does, at each
  ``--lines``. Every line names its own image file: a real 64x64 JPEG hard-linked under a new name per line, so
  the image check opens as many files as there are lines without the disk holding a million images. Each size runs
  in a fresh process; peak RSS is that process's ``ru_maxrss``.
* ``image-check``: what the pre-sweep image check costs against a real S3 server (moto_server) behind a counting
  HTTP proxy (``tests.storage_servers.Proxy``), for ``--images`` photo-sized JPEGs (noise, about 1.3 MB): requests
  and bytes per image of the check as it is (headers) against the check as it was (every image read in full and
  decoded at reduced size), in the same command. Target: bytes read before a streaming job's first trial <= 10 % of
  the images' bytes.

* ``controller``: ``--trials`` trivial trials (5 reports each, no sleep, 1 CPU, 2 at a time) through the
  controller's own pieces as ``scheduler.controller.run_job`` assembles them (``bench/controller_overhead.py``'s
  visionsweep side: searcher, early-termination policy, run-folder callback, MLflow tracker, leaderboard), then
  ``report.html``. Per size, in a fresh process: the driver-side hooks' time per trial event (Tune's event loop is
  blocked while they run), wall seconds per trial, the driver's peak RSS, the run folder's size, and the report's
  size and time to write.

* ``live-view``: what watching a sweep costs. (a) For a run folder of ``--trials`` finished trials (5 evaluations
  each, files as the controller writes them): seconds to write the live report and to read ``visionsweep status``.
  (b) ``--sweep-trials`` trivial trials through the controller's pieces (as ``controller``) with and without the
  live view rewriting the report every ``--live-s`` seconds, side by side in fresh processes: wall seconds per
  trial and the hooks' time per event.

    .venv/bin/python bench/scale.py data-prep [--lines 10000 100000 1000000]
    .venv/bin/python bench/scale.py image-check [--images 100]
    .venv/bin/python bench/scale.py controller [--trials 10 100 1000]
    .venv/bin/python bench/scale.py live-view [--trials 100 1000] [--sweep-trials 100] [--live-s 0.5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _jpeg(seed: int, side: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------- data-prep

LINKS_PER_FILE = 50_000


def _make_dataset(folder: Path, lines: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for i in range(lines):
            name = f"img_{i:07d}.jpg"
            source = folder / f"src_{i // LINKS_PER_FILE}.jpg"  # file systems cap the links to one inode
            if i % LINKS_PER_FILE == 0:
                source.write_bytes(_jpeg(i, 64))
            os.link(source, images / name)
            f.write(json.dumps({"image_url": f"images/{name}", "image_details": {"format": "jpg", "width": 64,
                                                                                 "height": 64},
                                "label": f"class_{i % 50}"}) + "\n")
    return folder / "train.jsonl"


def _prep_once(jsonl: str, out: str) -> None:
    """One measurement, in this (fresh) process: prints one JSON line."""
    from trainers.data.prepare import prepare_data
    from trainers.labels import label_json

    t0 = time.perf_counter()
    data = prepare_data("image_classification", "label", jsonl, None, 0.2, 0)
    t1 = time.perf_counter()
    for name, recs in (("train", data.train), ("valid", data.valid)):
        with open(Path(out) / f"{name}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps({"image_url": r.image_url, "label": label_json(r.label), "source": r.source}) + "\n")
    t2 = time.perf_counter()
    print(json.dumps({"prepare_s": t1 - t0, "write_s": t2 - t1, "rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "images": len(data.train) + len(data.valid)}))


def data_prep(sizes: list[int]) -> None:
    print(f"{'lines':>9} {'prepare s':>10} {'write s':>8} {'total s':>8} {'us/line':>8} {'peak RSS MB':>12}")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="vs-scale-") as d:
            jsonl = _make_dataset(Path(d) / "data", n)
            out = Path(d) / "run"
            out.mkdir()
            proc = subprocess.run([sys.executable, __file__, "_prep_once", str(jsonl), str(out)], check=True,
                                  capture_output=True, text=True, cwd=ROOT)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            assert r["images"] == n, r
            total = r["prepare_s"] + r["write_s"]
            print(f"{n:>9} {r['prepare_s']:>10.1f} {r['write_s']:>8.1f} {total:>8.1f} {total / n * 1e6:>8.1f} "
                  f"{r['rss_mb']:>12.0f}", flush=True)


# ----------------------------------------------------------------------------------------------- image-check

def image_check(n_images: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from tests.storage_servers import Proxy, moto_s3_server
    from trainers.data import storage
    from trainers.data.images import ImageStore
    from trainers.data.prepare import prepare_data

    with tempfile.TemporaryDirectory(prefix="vs-check-") as d, moto_s3_server(Path(d) / "moto") as s3:
        tree = Path(d) / "tree"
        (tree / "images").mkdir(parents=True)
        with open(tree / "train.jsonl", "w") as f:
            for i in range(n_images):
                (tree / "images" / f"p{i}.jpg").write_bytes(_jpeg(i, 1000))
                f.write(json.dumps({"image_url": f"images/p{i}.jpg", "label": "ab"[i % 2]}) + "\n")
        image_bytes = sum(p.stat().st_size for p in (tree / "images").iterdir())
        s3.create("bench")
        url = s3.upload_tree("bench", tree, "set")
        with Proxy(s3.endpoint) as proxy, s3.env(AWS_ENDPOINT_URL=proxy.url):
            storage.clear_cache()
            t0 = time.perf_counter()
            data = prepare_data("image_classification", "label", f"{url}/train.jsonl", None, 0.2, 0,
                                store=ImageStore(stream=True))
            headers = (dict(proxy.requests), proxy.bytes_out, time.perf_counter() - t0)
            urls = [r.image_url for r in (*data.train, *data.valid)]
            proxy.reset()
            t0 = time.perf_counter()

            def full(u: str) -> None:  # the check as it was: the whole object, decoded at reduced size
                img = Image.open(io.BytesIO(storage.read_bytes(u)))
                img.draft("RGB", (64, 64))
                img.load()

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(full, urls))
            whole = (dict(proxy.requests), proxy.bytes_out, time.perf_counter() - t0)
    print(f"{n_images} JPEGs of {image_bytes / n_images / 1e6:.2f} MB on moto S3 ({image_bytes / 1e6:.1f} MB in all)")
    print(f"{'check':<28} {'requests/image':>15} {'bytes/image':>12} {'share of bytes':>15} {'seconds':>8}")
    for name, (reqs, nbytes, secs) in (("headers (prepare_data, all)", headers), ("whole images (as it was)", whole)):
        per = sum(reqs.values()) / n_images
        print(f"{name:<28} {per:>15.2f} {nbytes / n_images:>12.0f} {nbytes / image_bytes:>14.1%} {secs:>8.2f}  "
              f"{reqs}")
    print(f"bytes ratio headers / whole: {headers[1] / whole[1]:.4f}")


# ------------------------------------------------------------------------------------------------ controller

def _controller_once(n: int, live_s: float | None = None) -> None:
    """One size, in this (fresh) process: prints one JSON line."""
    import logging

    sys.path.insert(0, str(ROOT / "bench"))
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from controller_overhead import instrument, run_visionsweep

    from scheduler.report import write_report

    logging.getLogger("alembic").setLevel(logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    acc = instrument()
    with tempfile.TemporaryDirectory(prefix="vs-ctl-") as d:
        t = run_visionsweep(Path(d), n, seed=0, live_s=live_s)
        events = acc["RunFolderCallback.on_trial_result"][0] + acc["RunFolderCallback.on_trial_start"][0] + \
            acc["RunFolderCallback.on_trial_complete"][0]
        hooks = sum(sec for name, (_, sec) in acc.items() if not name.startswith("  "))
        run = Path(d) / "run"
        t0 = time.perf_counter()
        report = write_report(run)
        report_s = time.perf_counter() - t0
        own = [p for p in run.rglob("*") if p.is_file() and "ray" not in p.relative_to(run).parts[:1]]
        print(json.dumps({
            "trials": n, "events": events, "fit_s": t["setup+fit"], "post_s": t["post"],
            "hooks_ms_per_event": hooks / max(1, events) * 1e3,
            "by_hook_ms_per_call": {k.strip(): v[1] / max(1, v[0]) * 1e3 for k, v in acc.items()},
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "run_folder_mb": sum(p.stat().st_size for p in own) / 1e6,
            "report_mb": report.stat().st_size / 1e6, "report_s": report_s}))
    ray.shutdown()


def controller(sizes: list[int]) -> None:
    print(f"{'trials':>7} {'events':>7} {'s/trial':>8} {'hooks ms/event':>15} {'post s':>7} {'peak RSS MB':>12} "
          f"{'run MB':>7} {'report MB':>10} {'report s':>9}")
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "_controller_once", str(n)], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:>7} {r['events']:>7} {r['fit_s'] / n:>8.3f} {r['hooks_ms_per_event']:>15.2f} {r['post_s']:>7.1f} "
              f"{r['rss_mb']:>12.0f} {r['run_folder_mb']:>7.1f} {r['report_mb']:>10.2f} {r['report_s']:>9.2f}",
              flush=True)
        slow = sorted(r["by_hook_ms_per_call"].items(), key=lambda kv: -kv[1])[:4]
        print("        slowest hooks (ms/call): " + ", ".join(f"{k} {v:.1f}" for k, v in slow), flush=True)


# ------------------------------------------------------------------------------------------------ live view

def _finished_run(root: Path, n: int) -> Path:
    """A run folder of ``n`` finished trials, 5 evaluations each, in the controller's file layout."""
    import random

    rng = random.Random(0)
    run = root / "run"
    (run / "trials").mkdir(parents=True)
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n")
    (run / "sweep.json").write_text(json.dumps({"primary_metric": "accuracy", "total_trials": n,
                                               "started": time.time() - 600, "updated": time.time()}))
    for i in range(n):
        d = run / "trials" / f"t{i:05d}"
        d.mkdir()
        sampled = {"learning_rate": 10 ** rng.uniform(-4, -1), "optimizer": rng.choice(["sgd", "adamw"]),
                   "weight_decay": rng.uniform(0, 0.01)}
        (d / "params.json").write_text(json.dumps({"sampled": sampled, "fixed": {"number_of_epochs": 5},
                                                   "default": {"momentum": 0.9, "training_batch_size": 78}}))
        top = rng.uniform(0.1, 0.9)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "accuracy": top * e / 5}) + "\n"
                                                 for e in range(1, 6)))
        (d / "status.json").write_text(json.dumps({"status": "completed", "started": 0.0, "ended": 30.0}))
        (d / "log.txt").write_text("evaluation: ...\n")
    return run


def live_view(sizes: list[int], sweep_trials: int, live_s: float) -> None:
    from scheduler.report import write_report
    from scheduler.status import format_status, read_status

    print(f"{'trials':>7} {'live report s':>14} {'report MB':>10} {'status s':>9}")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="vs-live-") as d:
            run = _finished_run(Path(d), n)
            t0 = time.perf_counter()
            page = write_report(run, live=True)
            t1 = time.perf_counter()
            format_status(read_status(run))
            t2 = time.perf_counter()
            print(f"{n:>7} {t1 - t0:>14.2f} {page.stat().st_size / 1e6:>10.2f} {t2 - t1:>9.3f}", flush=True)
    print(f"\n{sweep_trials} trivial trials through the controller's pieces, each way in a fresh process:")
    print(f"{'live view':>22} {'s/trial':>8} {'hooks ms/event':>15} {'peak RSS MB':>12}")
    rows = {}
    for label, arg in (("without", []), (f"every {live_s:g} s", [str(live_s)])):
        proc = subprocess.run([sys.executable, __file__, "_controller_once", str(sweep_trials), *arg], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        r = rows[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{label:>22} {r['fit_s'] / sweep_trials:>8.3f} {r['hooks_ms_per_event']:>15.2f} {r['rss_mb']:>12.0f}",
              flush=True)
    a, b = rows["without"], rows[f"every {live_s:g} s"]
    print(f"ratio (with / without): s/trial {b['fit_s'] / a['fit_s']:.3f}, "
          f"hooks per event {b['hooks_ms_per_event'] / a['hooks_ms_per_event']:.3f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_prep_once":
        _prep_once(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_controller_once":
        _controller_once(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else None)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    dp = sub.add_parser("data-prep")
    dp.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ic = sub.add_parser("image-check")
    ic.add_argument("--images", type=int, default=100)
    ct = sub.add_parser("controller")
    ct.add_argument("--trials", type=int, nargs="+", default=[10, 100, 1000])
    lv = sub.add_parser("live-view")
    lv.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    lv.add_argument("--sweep-trials", type=int, default=100)
    lv.add_argument("--live-s", type=float, default=0.5)
    a = p.parse_args()
    if a.cmd == "data-prep":
        data_prep(a.lines)
    elif a.cmd == "image-check":
        image_check(a.images)
    elif a.cmd == "live-view":
        live_view(a.trials, a.sweep_trials, a.live_s)
    else:
        controller(a.trials)


if __name__ == "__main__":
    main()

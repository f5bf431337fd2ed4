"""What the data check (issue 29, ``scheduler.data_check``) costs per image, at 10 thousand and 100 thousand images.

The images: generated 48x48 PNGs (distinct noise patterns over a few shapes, ~3-7 KB each; 2 % of them byte copies
and 1 % copies in the validation set, so the findings are not empty), 10 classes, written once to a temporary folder
as a JSONL training set and a validation set (a tenth). Each size is checked at the ``quick`` level (content hash
and size of every image) and the ``standard`` level (plus the perceptual hashes), in Ray tasks on this machine's
local Ray, as ``run`` and ``check-data`` do. The baseline, run side by side: every image read and decoded once in
the same Ray tasks (what a trial's first epoch does at the least), so the ratio says what the check adds to reading
the data. Printed: seconds, microseconds per image, the ratio to the baseline, and the findings (which must name the
planted copies).

    .venv/bin/python bench/data_check.py [--sizes 10000 100000] [--levels quick standard]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine_info import describe  # noqa: E402


def make_images(folder: Path, n: int, seed: int = 0) -> tuple[list, list, int, int]:
    """``n`` training and ``n // 10`` validation records over generated PNGs, with 2 % byte-copied training
    images and 1 % of the validation images byte copies of training ones."""
    import numpy as np
    from PIL import Image

    from trainers.data.tables import Record

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    classes = [f"c{i}" for i in range(10)]

    def image(i: int) -> Path:
        p = folder / f"{i:07d}.png"
        a = (nrng.random((48, 48)) * 80).astype("uint8")
        y, x = rng.randrange(4, 30), rng.randrange(4, 30)
        a[y:y + 14, x:x + 14] += 150
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        p.write_bytes(buf.getvalue())
        return p

    train = [Record(str(image(i)), rng.choice(classes), f"train.jsonl:{i + 1}") for i in range(n)]
    copies = rng.sample(range(n), n // 50)
    for k, i in enumerate(copies):
        p = folder / f"copy_{k:06d}.png"
        p.write_bytes(Path(train[i].image_url).read_bytes())
        train.append(Record(str(p), train[i].label, f"train.jsonl:{len(train) + 1}"))
    valid = [Record(str(image(n + i)), rng.choice(classes), f"valid.jsonl:{i + 1}") for i in range(n // 10)]
    leaks = rng.sample(range(n), n // 1000 or 1)
    for k, i in enumerate(leaks):
        p = folder / f"leak_{k:06d}.png"
        p.write_bytes(Path(train[i].image_url).read_bytes())
        valid.append(Record(str(p), train[i].label, f"valid.jsonl:{len(valid) + 1}"))
    return train, valid, len(copies), len(leaks)


def _read_all(urls, store):
    n = 0
    for u in urls:
        store.image(u).load()
        n += 1
    return n


def baseline(urls: list[str], store, chunk: int) -> float:
    """Every image read and decoded once in Ray tasks of the same size: the least a trial does with them."""
    import ray

    task = ray.remote(num_cpus=1)(_read_all)
    ref = ray.put(store)
    t = time.perf_counter()
    ray.get([task.remote(urls[i:i + chunk], ref) for i in range(0, len(urls), chunk)])
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--levels", nargs="+", default=["quick", "standard"])
    args = ap.parse_args()
    import ray

    from scheduler import data_check
    from scheduler.data_check.content import CHUNK
    from trainers.data.images import ImageStore

    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {describe('ray')}")
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray:     {ray.cluster_resources().get('CPU', 0):g} CPUs")
    store = ImageStore()
    print("| images | level | check s | us/image | read+decode s (baseline) | ratio | duplicate groups found / planted "
          "| leaks found / planted |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-data-check-") as tmp:
            t = time.perf_counter()
            train, valid, planted_dups, planted_leaks = make_images(Path(tmp), n)
            print(f"  ({len(train) + len(valid)} images written in {time.perf_counter() - t:.0f} s)", flush=True)
            urls = [r.image_url for r in (*train, *valid)]
            baseline(urls[:CHUNK], store, CHUNK)  # warm: the workers start, the page cache holds the files
            for level in args.levels:
                base = baseline(urls, store, CHUNK)
                t = time.perf_counter()
                found = data_check.check_data("image_classification", train, valid, [f"c{i}" for i in range(10)],
                                              store, level)
                took = time.perf_counter() - t
                total = len(set(urls))
                print(f"| {total} | {level} | {took:.1f} | {took / total * 1e6:.0f} | {base:.1f} | {took / base:.2f} "
                      f"| {len(found['duplicates'])} / {planted_dups} | {len(found['leakage'])} / {planted_leaks} |",
                      flush=True)
                print(f"  phases: {json.dumps(found['seconds'])}", flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

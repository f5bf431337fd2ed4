"""How long the read-only serving commands take on a running cluster: this tree against the tree of a baseline
commit (issue 26).

A one-node Ray (2 CPUs, ``cluster.local.LocalCluster``: stopped by our own PIDs, never ``ray stop``) hosts an
endpoint with two deployments: ``blue`` (runs, 100 % of the traffic) and ``green`` (asks for 64 CPUs with
``--no-wait``: its replica never starts, as in a rollout that waits for resources). Each command is run as the
operator runs it, a new ``visionsweep`` process, timed from its start to its exit:

    endpoint show EP | deployment show EP blue | deployment show EP green

alternately by this tree ("after") and by the baseline commit's tree ("before", ``git archive`` of
``--baseline-ref`` into a temporary folder, run from there; the same venv, the same cluster). A third row is a
floor that neither side can go below: ``python -c "import ray; from ray import serve"``.

    .venv/bin/python bench/serving_commands.py [--repeats 5] [--baseline-ref 64b0fba]

Target: ``endpoint show`` and ``deployment show`` (blue) under 2 s after (median), and their outputs unchanged
in shape (the same keys; ``ready`` may differ where the baseline was wrong).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine_info import describe  # noqa: E402

from cluster.local import MARKER_ENV, LocalCluster  # noqa: E402

PY = sys.executable
MAIN = "import sys; from visionsweep.cli import main; sys.exit(main())"  # what the `visionsweep` script runs
TREES = ("scheduler", "serving", "trainers", "cluster", "visionsweep")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_package(root: Path) -> Path:
    """A ResNet-18 package at 32x32 (random weights: loading it is what matters here, not its answers)."""
    import torch

    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.classifiers import build_model
    from trainers.package import save_package

    torch.manual_seed(0)
    h = resolve_hyperparameters("image_classification", {"model_name": "resnet18", "validation_crop_size": 32,
                                                         "validation_resize_size": 32}, {})
    return save_package(root / "pkg", model=build_model("resnet18", 10, 32), task="image_classification",
                        classes=[f"c{i}" for i in range(10)], hyperparameters=h, metrics={})


def baseline_tree(ref: str, dest: Path) -> Path:
    """The baseline commit's packages (``git archive``), run from ``dest``: its folder comes first on sys.path."""
    archive = dest / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref, *TREES], check=True)
    with tarfile.open(archive) as t:
        t.extractall(dest / "tree", filter="data")
    return dest / "tree"


def run(cwd: Path, env: dict[str, str], *argv: str, check: bool = True) -> tuple[float, str, str]:
    """``visionsweep ARGV`` from the tree at ``cwd``: (seconds from start to exit, stdout, stderr)."""
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", MAIN, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if check and r.returncode != 0:
        raise SystemExit(f"`visionsweep {' '.join(argv)}` ({cwd}) failed with {r.returncode}:\n{r.stderr[-3000:]}")
    return seconds, r.stdout, r.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-ref", default="64b0fba", help="the commit to compare with (before issue 26)")
    args = ap.parse_args()
    print(f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {describe('torch', 'ray')}")
    print(f"command: {' '.join([Path(PY).name, *sys.argv])}")

    work = Path(tempfile.mkdtemp(prefix="vs-bench-cmds-"))
    before = baseline_tree(args.baseline_ref, work)
    cluster = LocalCluster(work / "cluster", head_cpus=2, worker_cpus=0)
    cluster.start()
    try:
        cluster.stop_worker(force=False, wait_dead=True, timeout=90)  # one node: one Serve proxy on our port
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "VISIONSWEEP_")) and k != MARKER_ENV}
        env.update(cluster.env(), VISIONSWEEP_HOME=str(work / "home"), VISIONSWEEP_SERVE_PORT=str(free_port()),
                   PYTHONUNBUFFERED="1")
        pkg = make_package(work)
        (work / "ep.yml").write_text("name: ep-bench\nauth_mode: key\n")
        for name, cpus in (("blue", 0.5), ("green", 64)):
            (work / f"{name}.yml").write_text(f"name: {name}\nendpoint_name: ep-bench\nmodel: {pkg}\n"
                                              f"instance_count: 1\ncpus_per_instance: {cpus}\n")
        run(ROOT, env, "endpoint", "create", "-f", str(work / "ep.yml"))
        run(ROOT, env, "deployment", "create", "-f", str(work / "blue.yml"))
        run(ROOT, env, "endpoint", "update", "ep-bench", "--traffic", "blue=100")
        run(ROOT, env, "deployment", "create", "-f", str(work / "green.yml"), "--no-wait")

        commands = {"endpoint show": ("endpoint", "show", "ep-bench"),
                    "deployment show (blue, runs)": ("deployment", "show", "ep-bench", "blue"),
                    "deployment show (green, no replica)": ("deployment", "show", "ep-bench", "green")}
        sides = {"before": before, "after": ROOT}
        times: dict[tuple[str, str], list[float]] = {}
        outputs: dict[tuple[str, str], str] = {}
        floor = []
        for r in range(args.repeats):
            order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))  # A B, then B A
            for label, argv in commands.items():
                for side, tree in order:
                    seconds, out, _ = run(tree, env, *argv)
                    times.setdefault((label, side), []).append(seconds)
                    outputs[(label, side)] = out
                    print(f"  repeat {r + 1} {side:<6} {label:<36} {seconds:6.2f} s", flush=True)
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", "import ray; from ray import serve"], env=env, check=True)
            floor.append(time.perf_counter() - t0)

        print()
        print("| command | before s (median) | after s (median) | after / before "
              "| per repeat before | per repeat after |")
        print("|---|---:|---:|---:|---|---|")
        ok = True
        for label in commands:
            b, a = statistics.median(times[(label, "before")]), statistics.median(times[(label, "after")])
            print(f"| `{label}` | {b:.2f} | {a:.2f} | {a / b:.2f} | "
                  + ", ".join(f"{x:.2f}" for x in times[(label, "before")]) + " | "
                  + ", ".join(f"{x:.2f}" for x in times[(label, "after")]) + " |")
            if "green" not in label:
                ok &= a < 2.0
        print(f"| floor: `import ray; from ray import serve` | | {statistics.median(floor):.2f} | | | "
              + ", ".join(f"{x:.2f}" for x in floor) + " |")
        print()
        for label in commands:
            for side in sides:
                print(f"{side} `{label}`: {json.dumps(json.loads(outputs[(label, side)]), separators=(',', ':'))}")
        same_keys = all(set(json.loads(outputs[(label, "before")])) <= set(json.loads(outputs[(label, "after")]))
                        for label in commands)
        print(f"\nendpoint show and deployment show (blue) under 2 s after: {'PASS' if ok else 'FAIL'}; "
              f"outputs keep the baseline's keys: {'yes' if same_keys else 'NO'}")
        return 0 if ok and same_keys else 1
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

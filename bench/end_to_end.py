"""Wall time of a whole short job: ``visionsweep run`` vs. the same sweep as a plain Ray Tune + torchvision
script (issue 11, "the fixed cost of a job").

visionsweep: ``visionsweep run bench/jobs/e2e_grid.yml -o DIR`` (4 trials of ResNet-18, 1 epoch, 320/80
Fashion-MNIST images, 2 at a time), with everything it does by default: the image check, MLflow tracking,
the leaderboard, the best model package, the report. plain: ``bench/plain_tune_sweep.py DIR``, the sweep a
user writes by hand (see its docstring). Each is one command, timed from start to exit (Python start,
imports and the local Ray's start included on both sides); they run alternately A B, B A, ... after one
untimed warm-up of each, and the ratio is median(visionsweep) / median(plain). visionsweep's own phase
timings (summary.json ``timings_s``) are printed per run: where its time goes.

    .venv/bin/python bench/end_to_end.py [--repeats 3] [--target 1.05] [--no-figures-side]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import describe, repeats_table, verdict

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "bench" / "jobs" / "e2e_grid.yml"


NO_FIGURES = "visionsweep, no figures"  # the same command with the deployment figures off: what they cost


def command(side: str, out: Path) -> list[str]:
    if side.startswith("visionsweep"):  # the CLI of this checkout (python -m from ROOT: a worktree measures its own)
        return [sys.executable, "-m", "visionsweep.cli", "run", str(JOB), "--output", str(out)]
    return [sys.executable, str(ROOT / "bench" / "plain_tune_sweep.py"), str(out)]


def run(side: str) -> tuple[float, dict]:
    env = {**os.environ, **({"VISIONSWEEP_DEPLOY_FIGURES": "0"} if side == NO_FIGURES else {})}
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        proc = subprocess.run(command(side, out), cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        timings = {}
        if side.startswith("visionsweep"):
            timings = json.loads((out / "summary.json").read_text()).get("timings_s", {})
        shutil.rmtree(out, ignore_errors=True)
    return wall, timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.05)
    ap.add_argument("--no-figures-side", action="store_true",
                    help=f"also run {NO_FIGURES!r}: the deployment figures' own cost, side by side")
    args = ap.parse_args()
    print(f"date:    {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"machine: {describe('torch', 'ray')}")
    print(f"job:     {JOB.relative_to(ROOT)} (4 x ResNet-18, 1 epoch, 2 at a time) vs bench/plain_tune_sweep.py")
    sides = ("visionsweep", "plain", *((NO_FIGURES,) if args.no_figures_side else ()))
    for side in sides:  # untimed warm-up (page cache, .pyc files)
        run(side)
    walls: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            wall, timings = run(side)
            walls[side].append(wall)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
            print(f"  repeat {r + 1} {side:<23} {wall:6.1f} s" + (f"   ({phases})" if phases else ""), flush=True)
    med = {s: statistics.median(v) for s, v in walls.items()}
    print()
    print(repeats_table(walls, med, "{:.1f}", " s"))
    return verdict(med, args.target, higher_is_better=False)


if __name__ == "__main__":
    raise SystemExit(main())

"""Warm start from earlier sweeps (SPEC §8.7): read their trials back from their run folders.

A job names up to five earlier run folders in ``visionsweep.resume_from``. Bayesian sampling uses
their (configuration, best primary metric) pairs as prior observations; random and grid sampling feed
their per-interval metric histories to the early-termination policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.runfolder import read_params
from scheduler.runstore import RunStore
from trainers.data.urls import is_remote
from trainers.errors import VisionsweepError

MAX_PARENTS = 5


@dataclass
class PriorTrial:
    run: str
    trial_id: str
    params: dict[str, Any]
    values: list[float]  # primary metric per report, in order

    @property
    def best(self) -> float:
        return max(self.values)


def load_prior_trials(run_dirs: list[str], primary: str) -> list[PriorTrial]:
    if len(run_dirs) > MAX_PARENTS:
        raise VisionsweepError(f"visionsweep.resume_from: at most {MAX_PARENTS} earlier runs, but got {len(run_dirs)}")
    out = []
    for rd in run_dirs:
        trials = _local_run(rd) / "trials"
        if not trials.is_dir():
            raise VisionsweepError(f"visionsweep.resume_from: {rd} is not a visionsweep run folder (no trials/)")
        for t in sorted(trials.iterdir()):
            mfile, pfile = t / "metrics.jsonl", t / "params.json"
            if not (mfile.is_file() and pfile.is_file()):
                continue
            rows = [json.loads(x) for x in mfile.read_text().splitlines() if x.strip()]
            values = [float(r[primary]) for r in rows if primary in r]
            if values:
                out.append(PriorTrial(str(rd), t.name, read_params(t)[0], values))
    return out


def _local_run(run_dir: str) -> Path:
    """A run folder to read: itself, or for a storage URL a staging copy of its ``trials/`` (metrics and
    parameters only; checkpoints stay where they are)."""
    if not is_remote(run_dir):
        return Path(run_dir)
    store = RunStore.at(run_dir)
    store.pull(only=("trials",))
    return store.local

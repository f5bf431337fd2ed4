"""The run folder's files: what each trial wrote (``trials/<id>/...``), the running sweep's ``sweep.json``, and how
they are read back.

Per trial: ``params.json`` (every hyperparameter the trial runs with, in three parts: ``sampled`` by the sweep,
``fixed`` by the job's training_parameters, and the task's and model's ``default``), ``metrics.jsonl`` (one line per
evaluation), ``log.txt`` (what the trial printed), ``status.json`` and ``initial_weights.json`` (where the trial's
weights came from). ``scheduler.recorder`` writes them live while the sweep runs; everything after the sweep
(leaderboard, best model, report, status, resume, ``Result.load``) reads them, never the controller's memory, so a
crashed, cancelled or resumed sweep keeps every finished trial's parameters and metrics.

This module imports neither Ray nor torch: ``visionsweep status`` and ``report`` and the Python API's
``Result.load`` read a run folder with it on a machine that has neither.

Schedulers that stop a trial early drop a ``stopped.json`` marker (``mark_stopped``) so that the
trial's final status says which policy stopped it and at which epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAM_PARTS = ("sampled", "fixed", "default")  # params.json's parts
FINAL = ("completed", "error")  # statuses a trial never leaves; "stopped..." ones are final too
CANCELLED = "cancelled"  # a trial the sweep's cancellation interrupted: unfinished, a resume goes on with it
SWEEP_FILE = "sweep.json"  # the running sweep: its size, start and heartbeat (summary.json replaces it as truth)


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    retry: bool = True  # False: resume does not train it again (see recorder.RunFolderCallback.on_trial_error)
    errors: int = 0  # sweeps (the first and each resume) in which the trial ended in an error
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # all of them: sampled, fixed and default

    @property
    def finished(self) -> bool:
        return self.status in FINAL or self.status.startswith("stopped")


def trial_dir(run_dir: Path, trial_id: str) -> Path:
    d = Path(run_dir) / "trials" / trial_id
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_json(p: Path, default: Any) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def read_metrics(d: Path) -> list[dict[str, Any]]:
    """A trial folder's evaluations (``metrics.jsonl``), skipping a half-written last line."""
    try:
        lines = (d / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:  # a running trial may have a half-written last line
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict):
            out.append(m)
    return out


def read_trials(run_dir: Path) -> dict[str, TrialRecord]:
    """Every trial of a run folder, from its files."""
    out: dict[str, TrialRecord] = {}
    root = Path(run_dir) / "trials"
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        st = read_json(d / "status.json", {})
        st = st if isinstance(st, dict) else {}
        sampled, everything = read_params(d)
        out[d.name] = TrialRecord(d.name, sampled, read_metrics(d),
                                  str(st.get("status") or "pending"), st.get("error"),
                                  st.get("started"), st.get("ended"),
                                  st.get("retry", True), int(st.get("errors") or 0), everything)
    return out


def read_params(d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial folder's sampled values and all its hyperparameters (``params.json``; a run folder written before
    params.json had its three parts holds the sampled values only, which are then all that is known)."""
    doc = read_json(Path(d) / "params.json", {})
    doc = doc if isinstance(doc, dict) else {}
    if doc and set(doc) <= set(PARAM_PARTS) and all(isinstance(v, dict) for v in doc.values()):
        sampled = dict(doc.get("sampled") or {})
        return sampled, {**(doc.get("default") or {}), **(doc.get("fixed") or {}), **sampled}
    return doc, dict(doc)


def params_doc(sampled: dict[str, Any], everything: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """``params.json``: every hyperparameter of a trial, each under where its value came from."""
    rest = {k: v for k, v in everything.items() if k not in sampled}
    return {"sampled": dict(sampled), "fixed": {k: v for k, v in rest.items() if k in fixed},
            "default": {k: v for k, v in rest.items() if k not in fixed}}


def finite(v: Any) -> bool:
    """A real number (not a bool, NaN or infinity): what a metric or time in the run folder's files must be to use."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def duration(s: Any) -> str:
    """Seconds as a reader wants them: ``12.5 s``, ``3 min 20 s``, ``2 h 5 min``; ``?`` when unknown."""
    if not finite(s):
        return "?"
    m, sec = divmod(round(s), 60)
    return f"{s:.1f} s" if m == 0 else (f"{m} min {sec} s" if m < 60 else f"{m // 60} h {m % 60} min")


def write_atomic(path: Path, text: str) -> None:
    """Readers (a browser reloading the report, ``status``, the storage mirror) see the old file or the new one,
    never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_status(run_dir: Path, rec: TrialRecord) -> None:
    doc = {"status": rec.status, "error": rec.error, "retry": rec.retry, "errors": rec.errors,
           "evaluations": len(rec.metrics),
           "started": rec.started, "ended": rec.ended}
    (trial_dir(run_dir, rec.trial_id) / "status.json").write_text(json.dumps(doc, indent=2) + "\n")


def mark_stopped(run_dir: str | None, trial_id: str, policy: str, epoch: Any) -> None:
    """Called by a scheduler when it stops a trial early."""
    if run_dir:
        (trial_dir(Path(run_dir), trial_id) / "stopped.json").write_text(
            json.dumps({"by": policy, "epoch": epoch}) + "\n")


def mark_unfinished(run_dir: Path, status: str) -> list[str]:
    """Trials still running when the sweep ended (time budget, cancel): keep their results, mark them
    (``cancelled``: unfinished, a resume continues them; ``stopped (timeout)``: finished at the job's limit)."""
    marked = []
    for rec in read_trials(run_dir).values():
        if rec.status in ("running", "pending"):
            rec.status, rec.ended = status, time.time()
            write_status(run_dir, rec)
            marked.append(rec.trial_id)
    return marked


def better(value: float, trial_id: str, best: tuple[float, str] | None) -> bool:
    """Whether ``trial_id``'s ``value`` beats ``best``: a higher value, or the same value by a trial whose id sorts
    first, the order in which the leaderboard and the choice of the best model (``best/``) break ties (one best
    everywhere)."""
    return best is None or value > best[0] or (value == best[0] and trial_id < best[1])


def append_log(run_dir: Path, trial_id: str, text: str) -> None:
    with open(trial_dir(run_dir, trial_id) / "log.txt", "a", encoding="utf-8") as f:
        f.write(text)


def report_interval_s() -> float:
    """Seconds between two live rewrites of the report and of ``sweep.json``'s heartbeat (``scheduler.live``;
    ``$VISIONSWEEP_REPORT_S``, default 10): ``visionsweep status`` judges a heartbeat's age by it."""
    try:
        return max(0.0, float(os.environ.get("VISIONSWEEP_REPORT_S", "10")))
    except ValueError:
        return 10.0


def write_sweep_file(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Create or update ``sweep.json`` (fields merged into what is there)."""
    path = Path(run_dir) / SWEEP_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc.update(fields)
    write_atomic(path, json.dumps(doc, indent=2) + "\n")
    return doc

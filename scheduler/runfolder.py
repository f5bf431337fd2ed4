"""The run folder, written live while a sweep runs, and the terminal progress lines.

``RunFolderCallback`` is a Ray Tune callback on the driver: for every trial it writes
``trials/<id>/params.json`` when the trial starts and appends one line per evaluation to
``trials/<id>/metrics.jsonl``, then ``status.json`` when it ends. So a crashed or cancelled sweep still
leaves every finished trial's parameters and metrics on disk.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

# Keys Ray adds to every result; they are not metrics of ours.
_RAY_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
             "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
             "experiment_tag", "should_checkpoint"}


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    error: str | None = None
    started: float | None = None
    ended: float | None = None


class RunFolderCallback(Callback):
    def __init__(self, run_dir: Path, primary: str, total: int, echo: Callable[[str], None] | None = None):
        self.run_dir, self.primary, self.total = Path(run_dir), primary, total
        self.trials: dict[str, TrialRecord] = {}
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.t0 = time.time()
        self.best: tuple[float, str] | None = None

    def _dir(self, trial_id: str) -> Path:
        d = self.run_dir / "trials" / trial_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _progress(self, event: str) -> None:
        states = [t.status for t in self.trials.values()]
        running, done = states.count("running"), sum(s not in ("running", "pending") for s in states)
        best = f"best {self.primary} {self.best[0]:.4f} ({self.best[1]})" if self.best else "no result yet"
        self.echo(f"[{time.time() - self.t0:6.1f}s] {event:<46} | running {running}, done {done}/{self.total} | {best}")

    def on_trial_start(self, iteration, trials, trial, **info):
        rec = self.trials.setdefault(trial.trial_id, TrialRecord(trial.trial_id, dict(trial.config)))
        rec.status, rec.started = "running", time.time()
        (self._dir(trial.trial_id) / "params.json").write_text(json.dumps(rec.params, indent=2, default=str) + "\n")
        desc = ", ".join(f"{k}={_short(v)}" for k, v in rec.params.items()) or "defaults"
        self._progress(f"start {trial.trial_id} ({desc})"[:46])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = self.trials.get(trial.trial_id)
        if rec is None or self.primary not in result:
            return
        row = {k: v for k, v in result.items() if k not in _RAY_KEYS}
        row["time_total_s"] = result.get("time_total_s")
        rec.metrics.append(row)
        with open(self._dir(trial.trial_id) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        v = result[self.primary]
        if self.best is None or v > self.best[0]:
            self.best = (v, trial.trial_id)
        self._progress(f"{trial.trial_id} epoch {row.get('epoch')}: {self.primary} {v:.4f}")

    def _end(self, trial, status: str, error: str | None = None) -> None:
        rec = self.trials.setdefault(trial.trial_id, TrialRecord(trial.trial_id, dict(trial.config)))
        rec.status, rec.error, rec.ended = status, error, time.time()
        self._write_status(rec)
        self._progress(f"{status} {trial.trial_id}" + (f": {error[:30]}" if error else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error", _error_summary(trial))

    def mark_unfinished(self, status: str) -> None:
        """Trials still running when the sweep ended (time budget, cancel): keep their results, mark them."""
        for rec in self.trials.values():
            if rec.status in ("running", "pending"):
                rec.status, rec.ended = status, time.time()
                self._write_status(rec)

    def _write_status(self, rec: TrialRecord) -> None:
        doc = {"status": rec.status, "error": rec.error, "evaluations": len(rec.metrics),
               "started": rec.started, "ended": rec.ended}
        (self._dir(rec.trial_id) / "status.json").write_text(json.dumps(doc, indent=2) + "\n")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _error_summary(trial) -> str:
    """The last line of the trial's error: the user-facing message, not the Ray traceback."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("trainers.", "scheduler.")) or "Error:" in ln or "Error" in ln.split(":")[0]:
            msg = ln.split(": ", 1)[1] if ": " in ln else ln
            return msg
    return lines[-1] if lines else "trial failed"

"""The Ray Tune callback that writes a sweep's run folder while its trials run, and the terminal progress lines.

``RunFolderCallback`` runs on the driver. For every trial it writes ``trials/<id>/params.json`` when the trial
starts, appends one line per evaluation to ``trials/<id>/metrics.jsonl``, appends what the trial printed to
``trials/<id>/log.txt`` (it arrives with each evaluation, so a trial on any node of the cluster has its log here),
keeps ``trials/<id>/status.json`` current and writes ``trials/<id>/initial_weights.json`` from its first report.
What the files hold and how they are read back is ``scheduler.runfolder``, which imports no Ray: only this writer
does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from scheduler.runfolder import (
    TrialRecord,
    append_log,
    better,
    params_doc,
    read_json,
    read_trials,
    trial_dir,
    write_status,
)

# Keys Ray adds to every result; they are not metrics of ours.
_RAY_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
             "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
             "experiment_tag", "should_checkpoint"}
INITIAL_WEIGHTS = "initial_weights"  # the provenance a trial's first evaluation reports (trainers.engine)
LOG = "log"  # what the trial printed since its last evaluation (trainers.launch: a result key, not a metric)


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def progress_line(event: str, width: int = 46) -> str:
    """``event`` in at most ``width`` characters where it lists a trial's parameters (``start t1 (a=1, b=2)``), cut
    after a whole ``name=value`` (ending in …), never inside one: a cut value reads as another value. Any other
    event (a metric and its value) is kept whole, however long."""
    if len(event) <= width or "(" not in event:
        return event
    cut = event[: width - 1]
    for sep in (", ", " "):
        i = cut.rfind(sep)
        if i > 0:
            return cut[:i].rstrip(",(") + "…"
    return cut + "…"


class RunFolderCallback(Callback):
    def __init__(self, run_dir: Any, primary: str, total: int, echo: Callable[[str], None] = _stderr,
                 resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 fixed: dict[str, Any] | None = None):
        # A path, or a RunStore: Tune pickles its callbacks with the experiment, and a sweep resumed from
        # storage on another machine must write to that machine's staging folder, not the lost one's.
        self._where = run_dir if hasattr(run_dir, "local") else Path(run_dir)
        self.primary, self.total, self.echo = primary, total, echo
        # resolve: a trial's sampled values -> all its hyperparameters (trainers.hyperparameters); fixed: the job's
        self.resolve, self.fixed = resolve, dict(fixed or {})
        self.t0 = time.time()
        self._trials: dict[str, TrialRecord] | None = None  # loaded from the files on first use (resume)
        self._seq: int | None = None
        # the progress line's tallies, kept up to date per event: recounting every trial's every evaluation on
        # each event made an event cost grow with the sweep (4x from 100 to 1000 trials)
        self._running: set[str] | None = None
        self._done: set[str] = set()
        self._best: tuple[float, str] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(getattr(self._where, "local", self._where))

    @property
    def trials(self) -> dict[str, TrialRecord]:
        if self._trials is None:
            self._trials = read_trials(self.run_dir)
        return self._trials

    def _recount(self) -> None:
        """The tallies from the records (at the first event, and after a trial's metrics were rewound)."""
        recs = self.trials.values()
        self._running = {r.trial_id for r in recs if r.status == "running"}
        self._done = {r.trial_id for r in recs if r.finished}
        self._best = None
        for r in recs:
            for m in r.metrics:
                if self.primary in m and better(m[self.primary], r.trial_id, self._best):
                    self._best = (m[self.primary], r.trial_id)

    def _tally(self, rec: TrialRecord) -> None:
        """``rec`` changed status: move it between the running and finished sets."""
        if self._running is None:
            self._recount()
            return
        (self._running.add if rec.status == "running" else self._running.discard)(rec.trial_id)
        (self._done.add if rec.finished else self._done.discard)(rec.trial_id)

    def _progress(self, event: str) -> None:
        if self._running is None:
            self._recount()
        best = self._best
        best_s = f"best {self.primary} {best[0]:.4f} ({best[1]})" if best else "no result yet"
        self.echo(f"[{time.time() - self.t0:6.1f}s] {progress_line(event):<46} | running {len(self._running)}, done "
                  f"{len(self._done)}/{self.total} | {best_s}")

    def on_trial_start(self, iteration, trials, trial, **info):
        rec = self.trials.get(trial.trial_id)
        resumed = rec is not None and bool(rec.metrics)
        if rec is None:
            rec = self.trials[trial.trial_id] = TrialRecord(trial.trial_id, dict(trial.config))
        rec.status, rec.started, rec.ended = "running", rec.started or time.time(), None
        self._tally(rec)
        d = trial_dir(self.run_dir, trial.trial_id)
        if not rec.hyperparameters:
            rec.hyperparameters = self.resolve(rec.params) if self.resolve else dict(rec.params)
        doc = params_doc(rec.params, rec.hyperparameters, self.fixed)
        (d / "params.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        write_status(self.run_dir, rec)
        desc = ", ".join(f"{k}={_short(v)}" for k, v in rec.params.items()) or "defaults"
        self._progress(("resume " if resumed else "start ") + f"{trial.trial_id} ({desc})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = self.trials.get(trial.trial_id)
        if rec is None:
            return
        if result.get(LOG):
            append_log(self.run_dir, trial.trial_id, result[LOG])
        if self.primary not in result:
            return
        if isinstance(result.get(INITIAL_WEIGHTS), dict):
            (trial_dir(self.run_dir, trial.trial_id) / f"{INITIAL_WEIGHTS}.json").write_text(
                json.dumps(result[INITIAL_WEIGHTS], indent=2) + "\n")
        row = {k: v for k, v in result.items() if k not in _RAY_KEYS and k not in (INITIAL_WEIGHTS, LOG)}
        row["time_total_s"] = result.get("time_total_s")
        # The sweep-wide order of reports: Tune hands each result to the scheduler and then to the callbacks,
        # in one thread, so this is the order the early-termination policy saw (its decisions can be replayed).
        if self._seq is None:
            self._seq = max((m.get("report_seq", 0) for r in self.trials.values() for m in r.metrics), default=0)
        self._seq += 1
        row["report_seq"] = self._seq
        epoch = row.get("epoch")
        path = trial_dir(self.run_dir, trial.trial_id) / "metrics.jsonl"
        if epoch is not None and rec.metrics and rec.metrics[-1].get("epoch", 0) >= epoch:
            # Restored from a checkpoint: the epochs after it are trained again; keep the new values.
            rec.metrics = [m for m in rec.metrics if m.get("epoch", 0) < epoch]
            path.write_text("".join(json.dumps(m, default=float) + "\n" for m in rec.metrics))
            self._running = None  # the best may have been among the values dropped: recount once
        rec.metrics.append(row)
        if self._running is not None and better(result[self.primary], trial.trial_id, self._best):
            self._best = (result[self.primary], trial.trial_id)
        with open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        self._progress(f"{trial.trial_id} epoch {epoch}: {self.primary} {result[self.primary]:.4f}")

    def _end(self, trial, status: str, error: str | None = None, retry: bool = True) -> None:
        rec = self.trials.setdefault(trial.trial_id, TrialRecord(trial.trial_id, dict(trial.config)))
        rec.status, rec.error, rec.ended, rec.retry = status, error, time.time(), retry
        self._tally(rec)
        write_status(self.run_dir, rec)
        self._progress(f"{status} {trial.trial_id}" + (f": {error}" if error else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        marker = read_json(trial_dir(self.run_dir, trial.trial_id) / "stopped.json", None)
        if marker:
            self._end(trial, f"stopped ({marker['by']})")
        elif (trial.last_result or {}).get("done"):
            self._end(trial, "completed")
        else:
            self._end(trial, "stopped")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # The trial's process or node died; Tune restarts it (visionsweep.trial_retries) from its last checkpoint.
        self._progress(f"retry {trial.trial_id} from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        # A resume trains an errored trial again once (the node or process may have been at fault); an
        # error of the job's own settings or data, or a second error, is final: the same trial would fail
        # the same way at every resume.
        message, transient = _error_summary(trial)
        text = _error_text(trial)
        if text:  # the traceback, after what the trial printed: log.txt tells the whole story of the trial
            append_log(self.run_dir, trial.trial_id, f"\n--- the trial failed ---\n{text}\n")
        rec = self.trials.setdefault(trial.trial_id, TrialRecord(trial.trial_id, dict(trial.config)))
        rec.errors += 1
        self._end(trial, "error", message, transient and rec.errors < MAX_ERRORED_SWEEPS)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


MAX_ERRORED_SWEEPS = 2  # an errored trial is trained again by one resume, not by every one

# Errors of the job's own settings or data (trainers.errors and subclasses): the same trial fails the same
# way every time, so a resumed sweep does not train it again.
SETTINGS_ERRORS = ("VisionsweepError", "SpecError", "DataError", "NotSupportedYet", "TrainingError")


def _error_text(trial) -> str:
    try:
        return Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        return ""


def _error_summary(trial) -> tuple[str, bool]:
    """The user-facing message of a trial's error (its last exception line, not the Ray traceback), and
    whether a retry could help (False for errors of the job's settings or data)."""
    text = _error_text(trial)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(": ", 1)[0]
        if head.endswith(("Error", "Exception", "NotSupportedYet")) and ": " in ln:
            return ln.split(": ", 1)[1], head.rsplit(".", 1)[-1] not in SETTINGS_ERRORS
    return (lines[-1] if lines else "trial failed"), True

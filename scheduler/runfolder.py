"""The run folder's per-trial files, written live while a sweep runs, and the terminal progress lines.

``RunFolderCallback`` is a Ray Tune callback on the driver. For every trial it writes
``trials/<id>/params.json`` when the trial starts (every hyperparameter the trial runs with, in three parts:
``sampled`` by the sweep, ``fixed`` by the job's training_parameters, and the task's and model's ``default``),
appends one line per evaluation to ``trials/<id>/metrics.jsonl``, appends what the trial printed to
``trials/<id>/log.txt`` (it arrives with each evaluation, so a trial on any node of the cluster has its log here),
keeps ``trials/<id>/status.json`` current and writes ``trials/<id>/initial_weights.json`` (where the trial's
weights came from) from its first report. Everything after the
sweep (leaderboard, best model, report, resume) reads these files, never the controller's memory,
so a crashed, cancelled or resumed sweep keeps every finished trial's parameters and metrics.

Schedulers that stop a trial early drop a ``stopped.json`` marker (``mark_stopped``) so that the
trial's final status says which policy stopped it and at which epoch.
"""

from __future__ import annotations

import json
import math
import os
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
INITIAL_WEIGHTS = "initial_weights"  # the provenance a trial's first evaluation reports (trainers.engine)
LOG = "log"  # what the trial printed since its last evaluation (trainers.launch: a result key, not a metric)
PARAM_PARTS = ("sampled", "fixed", "default")  # params.json's parts
FINAL = ("completed", "error")  # statuses a trial never leaves; "stopped..." ones are final too
CANCELLED = "cancelled"  # a trial the sweep's cancellation interrupted: unfinished, a resume goes on with it


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    retry: bool = True  # False: resume does not train it again (see RunFolderCallback.on_trial_error)
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
                                  str(st.get("status") or "pending"), st.get("error"), st.get("started"), st.get("ended"),
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


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def better(value: float, trial_id: str, best: tuple[float, str] | None) -> bool:
    """Whether ``trial_id``'s ``value`` beats ``best``: a higher value, or the same value by a trial whose id sorts
    first, the order in which the leaderboard and the best model's export break ties (one best everywhere)."""
    return best is None or value > best[0] or (value == best[0] and trial_id < best[1])


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


def append_log(run_dir: Path, trial_id: str, text: str) -> None:
    with open(trial_dir(run_dir, trial_id) / "log.txt", "a", encoding="utf-8") as f:
        f.write(text)


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

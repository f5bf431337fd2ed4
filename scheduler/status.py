"""``visionsweep status RUN [--watch] [--json]``: a sweep's trials and progress in the terminal, from its run folder.

Like the report, it reads the run folder's files only (``sweep.json``, ``trials/*``, ``summary.json``), so it works
on a running sweep, a finished one and one whose controller died, local or on storage (``az://``, ``s3://`` ...:
the trial files are copied to a staging folder first, the models never). A sweep is *running* while its controller
refreshes ``sweep.json``'s heartbeat (``scheduler.live``); a heartbeat older than :func:`stale_after_s` means the
controller stopped without finishing (``visionsweep resume RUN`` goes on).

The ETA counts epochs, not trials: a sweep whose trials are half-way through their epochs is half done, and
trials stopped early by the policy count as done.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scheduler.runfolder import (
    CANCELLED,
    SWEEP_FILE,
    better,
    duration,
    finite,
    read_json,
    read_trials,
    report_interval_s,
)
from trainers.errors import VisionsweepError

FILES = ("trials", "summary.json", SWEEP_FILE, "job.resolved.yaml")  # what status reads of a run on storage


class NotARunFolder(VisionsweepError):
    """Nothing of a sweep there (yet)."""


def stale_after_s() -> float:
    """How old the heartbeat may be before the controller counts as gone (several missed rewrites)."""
    return max(60.0, 6 * report_interval_s())


@dataclass
class TrialRow:
    trial_id: str
    status: str
    epoch: int | None
    epochs: int | None  # number_of_epochs of the trial, where its params.json says
    latest: float | None
    best: float | None
    decision: str
    time_s: float | None
    capacity: str | None = None  # spot | on-demand | "k/n spot": where its workers ran at its latest evaluation


def capacity(metrics: dict[str, Any]) -> str | None:
    """Where a trial's evaluation says its workers ran (``spot_workers`` of ``workers``, ``cluster.capacity``);
    None where it does not say (a run before it was recorded, a trial outside Ray)."""
    spot, workers = metrics.get("spot_workers"), metrics.get("workers", 1)
    if not finite(spot) or not finite(workers):
        return None
    return "on-demand" if spot <= 0 else "spot" if spot >= workers else f"{int(spot)}/{int(workers)} spot"


@dataclass
class Status:
    run: str
    state: str  # running | finished | cancelled | stopped (its controller died) | starting
    primary_metric: str
    total_trials: int | None
    done: int
    running: int
    pending: int
    elapsed_s: float | None
    eta_s: float | None
    best_trial: str | None
    best_metric: float | None
    note: str = ""
    trials: list[TrialRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _decision(run: Path, trial_id: str, status: str, error: str | None) -> str:
    """What the sweep decided about the trial, in words."""
    if status.startswith("stopped"):
        marker = read_json(run / "trials" / trial_id / "stopped.json", None)
        if isinstance(marker, dict) and marker.get("by"):
            return f"stopped by {marker['by']} at epoch {marker.get('epoch')}"
        return "stopped at the time limit" if "timeout" in status else "stopped"
    return {"completed": "ran all its epochs", "running": "continues", "pending": "waits for a slot",
            CANCELLED: "interrupted by the cancel; resume goes on from its last checkpoint"}.get(
        status, f"failed: {error}" if status == "error" and error else status)


def read_status(run_dir: Path, where: str | None = None, now: float | None = None) -> Status:
    run = Path(run_dir)
    now = time.time() if now is None else now
    summary = read_json(run / "summary.json", {})
    sweep = read_json(run / SWEEP_FILE, {})
    if not (run / "trials").is_dir() and not sweep and not summary:
        raise NotARunFolder(f"{where or run}: not a visionsweep run folder (no trials/, sweep.json or "
                               "summary.json)")
    primary = summary.get("primary_metric") or sweep.get("primary_metric") or "accuracy"
    rows, best = [], None
    progress = 0.0
    for rec in read_trials(run).values():
        status = rec.status
        if status == "pending" and rec.metrics:
            status = "running"
        scores = [m[primary] for m in rec.metrics if finite(m.get(primary))]
        epochs = rec.hyperparameters.get("number_of_epochs")
        epochs = int(epochs) if finite(epochs) else None
        epoch = rec.metrics[-1].get("epoch") if rec.metrics else None
        end = rec.ended if finite(rec.ended) else now
        row = TrialRow(rec.trial_id, status, epoch, epochs, scores[-1] if scores else None,
                       max(scores) if scores else None, _decision(run, rec.trial_id, status, rec.error),
                       round(end - rec.started, 1) if finite(rec.started) else None,
                       capacity(rec.metrics[-1]) if rec.metrics else None)
        rows.append(row)
        if row.best is not None and better(row.best, row.trial_id, best):
            best = (row.best, row.trial_id)
        finished = rec.finished
        progress += 1.0 if finished else min(1.0, (epoch or 0) / epochs) if epochs else 0.0
    cancelled = (summary or sweep).get("state") == CANCELLED
    total = summary.get("trials") if summary and not cancelled else sweep.get("total_trials", summary.get("trials"))
    done = sum(1 for r in rows if r.status in ("completed", "error") or r.status.startswith("stopped"))
    running = sum(1 for r in rows if r.status == "running")
    started = sweep.get("started")
    elapsed = summary.get("elapsed_s") if summary else (now - started if finite(started) else None)
    if cancelled:
        state, eta = CANCELLED, None
        note = (f"cancelled by {(summary or sweep).get('cancelled_by', 'a signal')}: finished trials are kept; "
                f"`visionsweep resume {where or run}` goes on")
    elif summary:
        state, note, eta = "finished", "", 0.0
        if summary.get("best_trial"):
            best = (summary.get("best_metric"), summary["best_trial"])
    else:
        updated = sweep.get("updated")
        quiet = now - updated if finite(updated) else None
        if quiet is not None and quiet > stale_after_s():
            state = "stopped"
            note = (f"no word from the sweep's controller for {duration(quiet)}: it stopped before the end; "
                    f"`visionsweep resume {where or run}` goes on from its last state")
        else:
            state = "running" if rows else "starting"
            note = ""
        frac = progress / total if finite(total) and total else None
        eta = elapsed * (1 - frac) / frac if frac and finite(elapsed) and state == "running" else None
    order = {"running": 0}
    rows.sort(key=lambda r: (order.get(r.status, 1), r.best is None, -(r.best or 0.0), r.trial_id))
    return Status(where or str(run), state, primary, int(total) if finite(total) else None, done, running,
                  max(0, int(total) - len(rows)) + sum(r.status == "pending" for r in rows) if finite(total) else
                  sum(r.status == "pending" for r in rows), round(elapsed, 1) if finite(elapsed) else None,
                  round(eta, 1) if finite(eta) else None, best[1] if best else None, best[0] if best else None,
                  note, rows)


def _score(v: float | None) -> str:
    return f"{v:.4f}" if finite(v) else "-"


def format_status(st: Status, limit: int = 30) -> str:
    total = st.total_trials if st.total_trials is not None else "?"
    head = (f"{st.run}: {st.state}; {st.done}/{total} trials done, {st.running} running, {st.pending} waiting; "
            f"elapsed {duration(st.elapsed_s)}" + (f", about {duration(st.eta_s)} left" if st.eta_s else ""))
    lines = [head]
    if st.best_trial:
        lines.append(f"best: {st.best_trial} ({st.primary_metric} {_score(st.best_metric)})")
    if st.note:
        lines.append(st.note)
    spot = [r for r in st.trials if r.capacity not in (None, "on-demand")]
    if spot:  # a sweep that ran nothing on spot capacity shows no column for it
        on = [r.trial_id for r in spot if r.status == "running"]
        lines.append(f"spot capacity: {len(spot)} trial(s) trained on spot nodes" +
                     (f", {len(on)} running now ({', '.join(on[:5])}{' ...' if len(on) > 5 else ''})" if on else "") +
                     "; a node told to leave checkpoints its trials at the next step")
    where = f" {'capacity':<10}" if spot else ""
    cols = f"{'trial':<14} {'state':<22} {'epoch':>7} {'latest':>8} {'best':>8}  {'time':>9}{where}  decision"
    lines += ["", cols, "-" * len(cols)]
    for r in st.trials[:limit]:
        epoch = f"{r.epoch or 0}/{r.epochs}" if r.epochs else str(r.epoch or "-")
        market = f" {(r.capacity or '-')[:10]:<10}" if spot else ""
        lines.append(f"{r.trial_id:<14} {r.status[:22]:<22} {epoch:>7} {_score(r.latest):>8} {_score(r.best):>8}  "
                     f"{duration(r.time_s):>9}{market}  {r.decision[:70]}")
    if len(st.trials) > limit:
        lines.append(f"... and {len(st.trials) - limit} more trials (--limit N, or --json for all)")
    return "\n".join(lines)


def _snapshot(run_dir: str) -> tuple[Path, str]:
    from scheduler.runstore import RunStore

    store = RunStore.at(run_dir)
    store.pull(only=FILES)
    return store.local, store.where


def show_status(run_dir: str, watch: bool = False, as_json: bool = False, interval_s: float = 2.0,
                limit: int = 30, out=None) -> int:
    """Print the status once, or (``watch``) until the sweep is no longer running, redrawing on a terminal and
    printing one status per update elsewhere (one JSON document a line with ``as_json``)."""
    out = out or sys.stdout
    tty = out.isatty() and not as_json
    last = None
    waiting_since = None
    try:
        while True:
            local, where = _snapshot(run_dir)
            try:
                st = read_status(local, where)
            except NotARunFolder:
                # `status --watch` started with `run`: the folder appears once the run has checked its job and
                # data; wait for it as long as a heartbeat may be late, then say what is wrong
                if not watch or (waiting_since is not None and time.time() - waiting_since > stale_after_s()):
                    raise
                if waiting_since is None:
                    waiting_since = time.time()
                    print(f"waiting for {where} to start (up to {duration(stale_after_s())}): no sweep has "
                          "written there yet", file=sys.stderr, flush=True)
                time.sleep(interval_s)
                continue
            text = json.dumps(st.to_json(), indent=None if watch else 2) if as_json else format_status(st, limit)
            if text != last:
                if tty and watch:
                    out.write("\x1b[H\x1b[2J")  # home and clear: the table is redrawn in place
                out.write(text + ("\n" if not watch or tty or as_json else "\n\n"))
                out.flush()
                last = text
            if not watch or st.state in ("finished", "stopped", CANCELLED):
                return 0
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0

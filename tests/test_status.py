"""``visionsweep status``: a sweep's trials and progress from its run folder, once or ``--watch``ed in a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from scheduler.status import format_status, read_status

ROOT = Path(__file__).resolve().parent.parent


def _trial(run: Path, tid: str, lr: float, accs: list[float], status: str, epochs: int = 4, **extra) -> Path:
    d = run / "trials" / tid
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.json").write_text(json.dumps({"sampled": {"learning_rate": lr},
                                               "fixed": {"number_of_epochs": epochs}, "default": {}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "accuracy": a}) + "\n"
                                             for i, a in enumerate(accs)))
    (d / "status.json").write_text(json.dumps({"status": status, "started": 1000.0, **extra}))
    return d


def _sweep(run: Path, updated: float, total: int = 4) -> None:
    (run / "sweep.json").write_text(json.dumps({"primary_metric": "accuracy", "total_trials": total,
                                                "started": 1000.0, "updated": updated}))


def test_status_of_a_running_sweep_counts_epochs_and_names_each_decision(tmp_path):
    run = tmp_path / "run"
    _trial(run, "a", 0.01, [0.2, 0.5, 0.6, 0.7], "completed", ended=1100.0)
    _trial(run, "b", 0.1, [0.1, 0.15], "stopped (bandit)", ended=1050.0)
    (run / "trials" / "b" / "stopped.json").write_text(json.dumps({"by": "bandit", "epoch": 2}))
    _trial(run, "c", 0.05, [0.3, 0.7], "running")  # ties a's best 0.7: a, first by id, stays the best
    _sweep(run, updated=1199.0)

    st = read_status(run, now=1200.0)
    assert (st.state, st.total_trials, st.done, st.running, st.pending) == ("running", 4, 2, 1, 1)
    assert (st.best_trial, st.best_metric) == ("a", 0.7)
    rows = {r.trial_id: r for r in st.trials}
    assert st.trials[0].trial_id == "c"  # running trials first
    assert (rows["c"].epoch, rows["c"].epochs, rows["c"].latest, rows["c"].time_s) == (2, 4, 0.7, 200.0)
    assert rows["b"].decision == "stopped by bandit at epoch 2" and rows["a"].decision == "ran all its epochs"
    # 2 trials done + half of c's epochs = 2.5 of 4 in 200 s: 120 s left
    assert st.eta_s == 120.0
    text = format_status(st)
    assert "2/4 trials done, 1 running, 1 waiting" in text and "about 2 min 0 s left" in text
    assert text.splitlines()[5].startswith("c ") and " 2/4 " in text.splitlines()[5]  # c: running, epoch 2 of 4


def test_a_silent_controller_is_reported_with_the_resume_command(tmp_path):
    run = tmp_path / "run"
    _trial(run, "a", 0.01, [0.2], "running")
    _sweep(run, updated=1000.0)
    st = read_status(run, now=1000.0 + 3600)
    assert st.state == "stopped" and "visionsweep resume" in st.note and st.eta_s is None


def _read_until(fd: int, want: str, proc: subprocess.Popen, seen: list[str]) -> str:
    """Read the pty until ``want`` has appeared (the event), failing if the process ends first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if want in "".join(seen):
            return "".join(seen)
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:  # the pty closed: the process ended
                break
        elif proc.poll() is not None:
            break
    raise AssertionError(f"{want!r} never appeared; output: {''.join(seen)[-2000:]!r}")


def _watch_in_a_terminal(run: Path) -> tuple[subprocess.Popen, int]:
    """`visionsweep status RUN --watch` on a pseudo-terminal: the process and the terminal's end to read."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "visionsweep.cli", "status", str(run), "--watch", "--interval",
                             "0.1"], stdin=sub, stdout=sub, stderr=sub, cwd=ROOT, close_fds=True)
    os.close(sub)
    return proc, main


def test_watch_redraws_in_a_terminal_and_ends_with_the_sweep(tmp_path):
    run = tmp_path / "run"
    trial = _trial(run, "t1", 0.01, [0.25], "running")
    _sweep(run, updated=time.time() + 10_000)  # a heartbeat that stays fresh for the test
    proc, main = _watch_in_a_terminal(run)
    seen: list[str] = []
    try:
        out = _read_until(main, "0.2500", proc, seen)
        assert "running" in out and "\x1b[2J" in out  # a terminal: the table is redrawn in place
        with open(trial / "metrics.jsonl", "a") as f:  # the trial reports its second epoch
            f.write(json.dumps({"epoch": 2, "accuracy": 0.5}) + "\n")
        _read_until(main, "0.5000", proc, seen)
        (run / "summary.json").write_text(json.dumps({"primary_metric": "accuracy", "trials": 1, "best_trial": "t1",
                                                      "best_metric": 0.5, "elapsed_s": 12.0}))
        _read_until(main, "finished", proc, seen)
        assert proc.wait(timeout=60) == 0  # the sweep ended: so does --watch
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def test_progress_lines_cut_parameter_lists_at_whole_items_and_keep_metrics_whole():
    from scheduler.recorder import progress_line

    start = progress_line("start 40290e05 (model_name=mobilenetv2, learning_rate=0.01, weight_decay=0.0001)")
    assert start == "start 40290e05 (model_name=mobilenetv2…" and len(start) <= 46
    metric = "010bcf9d epoch 1: mean_average_precision 0.0015"
    assert progress_line(metric) == metric  # the value is what the line is for


def test_watch_waits_for_the_run_folder_of_a_run_just_started(tmp_path):
    """`status --watch` started with `run`: it waits for the folder instead of refusing it, then follows it."""
    run = tmp_path / "run"  # nothing there yet
    proc, main = _watch_in_a_terminal(run)
    seen: list[str] = []
    try:
        _read_until(main, "waiting for", proc, seen)
        assert proc.poll() is None  # still waiting, not refused
        _trial(run, "t1", 0.01, [0.25], "running")
        _sweep(run, updated=time.time() + 10_000)
        _read_until(main, "0.2500", proc, seen)
        (run / "summary.json").write_text(json.dumps({"primary_metric": "accuracy", "trials": 1, "best_trial": "t1",
                                                      "best_metric": 0.25, "elapsed_s": 3.0}))
        _read_until(main, "finished", proc, seen)
        assert proc.wait(timeout=60) == 0
        assert "not a visionsweep run folder" not in "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def test_status_without_watch_still_refuses_a_folder_that_is_no_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "status", str(tmp_path / "nothing")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "not a visionsweep run folder" in out.stderr


def test_a_cancelled_sweep_says_so_and_names_the_resume_command(tmp_path):
    run = tmp_path / "run"
    _trial(run, "a", 0.01, [0.2, 0.4, 0.5, 0.6], "completed", ended=1100.0)
    _trial(run, "b", 0.1, [0.3], "cancelled", ended=1150.0)
    _sweep(run, updated=1150.0, total=3)
    (run / "summary.json").write_text(json.dumps({"state": "cancelled", "cancelled_by": "SIGTERM",
                                                  "primary_metric": "accuracy", "trials": 2, "best_trial": "a",
                                                  "best_metric": 0.6, "elapsed_s": 150.0}))
    st = read_status(run, now=5000.0)
    assert st.state == "cancelled" and "SIGTERM" in st.note and f"visionsweep resume {run}" in st.note
    # the interrupted trial is not done, the never-started one waits: 1 of 3 done
    assert (st.total_trials, st.done, st.pending) == (3, 1, 1)
    assert {r.trial_id: r.decision for r in st.trials}["b"].startswith("interrupted")

"""Ctrl-C and SIGTERM stop a sweep one way: exit 130 / 143, the run folder and MLflow say cancelled, nothing
interrupted is promoted, and ``visionsweep resume`` completes the sweep with every record whole (scheduler.stops)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.runfolder import read_trials
from tests.test_resume import sequential_grid_job

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3


def two_trial_job(data) -> str:
    return (sequential_grid_job(data, epochs=EPOCHS)
            .replace("max_trials: 3", "max_trials: 2")
            .replace("[0.001, 0.002, 0.003]", "[0.001, 0.002]")
            .replace("tracking: {enabled: false}", "tracking: {enabled: true}"))


def in_epoch_two(run: Path) -> bool:
    """The first trial has reported epoch 1 (and its checkpoint) and trains its second."""
    return any(t.status == "running" and len(t.metrics) == 1 for t in read_trials(run).values())


def mlflow_runs(run: Path) -> tuple[str, dict[str, tuple[str, list[int]]]]:
    """The parent run's status and, per trial run, (status, the epochs of its accuracy history)."""
    from mlflow.tracking import MlflowClient

    ids = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(ids["uri"])
    children = client.search_runs([ids["experiment_id"]], f"tags.mlflow.parentRunId = '{ids['parent']}'")
    return client.get_run(ids["parent"]).info.status, {
        r.data.tags["visionsweep.trial_id"]: (r.info.status, sorted(m.step for m in client.get_metric_history(
            r.info.run_id, "accuracy"))) for r in children}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_cancels_the_sweep_and_resume_completes_it(small_mltable, tmp_path, sig):
    job = tmp_path / "job.yml"
    job.write_text(two_trial_job(small_mltable))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "visionsweep.cli"]
    # its own process group, as a terminal gives a command: the signal goes to the whole group, as Ctrl-C does
    proc = subprocess.Popen(cmd + ["run", str(job), "--output", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
    try:
        while not in_epoch_two(run):
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            try:
                proc.wait(timeout=0.3)  # returns at once if the sweep ends
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 128 + sig, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"cancelled by {sig.name}") and f"visionsweep resume {run}" in last
    for noise in ("Traceback", "*** SIGTERM", "Tuner.restore", "Stop signal received"):
        assert noise not in err, err[-3000:]
    assert out == ""  # no leaderboard: the sweep did not finish

    trials = read_trials(run)
    interrupted = [t for t in trials.values() if t.status == "cancelled"]
    assert len(interrupted) == 1 and not any(t.status.startswith("stopped") for t in trials.values())
    assert not (run / "best").exists()  # an interrupted trial is never promoted
    summary = json.loads((run / "summary.json").read_text())
    assert summary["state"] == "cancelled" and summary["cancelled_by"] == sig.name
    status = subprocess.run(cmd + ["status", str(run), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(status.stdout)["state"] == "cancelled"
    parent, children = mlflow_runs(run)
    assert parent == "KILLED" and children[interrupted[0].trial_id][0] == "KILLED"

    done = subprocess.run(cmd + ["resume", str(run)], capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"1 continue from their last checkpoint ({interrupted[0].trial_id}), 1 new" in done.stderr
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    after = read_trials(run)
    assert len(after) == 2 and all(t.status == "completed" for t in after.values())
    resumed = after[interrupted[0].trial_id]
    assert [m["epoch"] for m in resumed.metrics] == list(range(1, EPOCHS + 1))
    assert any(m.get("resumed_from_epoch", 0) >= 1 for m in resumed.metrics)
    parent, children = mlflow_runs(run)
    # every trial in MLflow exactly once, finished, with each epoch once
    assert parent == "FINISHED"
    assert children == {tid: ("FINISHED", list(range(1, EPOCHS + 1))) for tid in after}
    assert json.loads((run / "summary.json").read_text())["state"] == "finished" and (run / "best").is_dir()

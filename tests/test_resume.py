"""Kill the controller mid-sweep, then ``visionsweep resume``: nothing finished is lost or re-run (§8.7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from scheduler.runfolder import read_trials

pytestmark = pytest.mark.ray


def sequential_grid_job(data, epochs: int, extra: str = "") -> str:
    """Three grid points, one at a time: a sweep that can be interrupted between and inside trials."""
    return f"""\
task: image_classification
target_column_name: label
training_data: {{path: {data}}}
limits: {{max_trials: 3, max_concurrent_trials: 1}}
training_parameters:
  model_name: resnet18
  number_of_epochs: {epochs}
  optimizer: adamw
  warmup_cosine_lr_warmup_epochs: 0
  early_stopping: 0
  training_batch_size: 8
  training_crop_size: 32
  validation_resize_size: 32
  validation_crop_size: 32
search_space:
  - learning_rate: {{type: choice, values: [0.001, 0.002, 0.003]}}
sweep: {{sampling_algorithm: grid}}
visionsweep: {{pretrained: false, tracking: {{enabled: false}}}}
""" + extra


def interruptible(trials) -> tuple[str, str] | None:
    """(a completed trial, a running trial two evaluations in), when the sweep has got that far."""
    done = [t.trial_id for t in trials.values() if t.status == "completed"]
    going = [t.trial_id for t in trials.values() if t.status == "running" and len(t.metrics) >= 2]
    return (done[0], going[0]) if done and going else None


def snapshot_shows(states: list[str], done: str, running: str) -> bool:
    """Whether one of Tune's experiment-state snapshots has ``done`` finished and a checkpoint of ``running``
    (Tune writes one every couple of seconds; a resume restores the newest)."""
    for text in states:
        try:
            trials = [(json.loads(entry[0]), entry[1]) for entry in json.loads(text)["trial_data"]]
        except (ValueError, KeyError, TypeError, IndexError):  # a snapshot being written
            continue
        status = {t["trial_id"]: t["status"] for t, _ in trials}
        checkpointed = {t["trial_id"] for t, meta in trials if "checkpoint_0" in meta}
        if status.get(done) == "TERMINATED" and running in checkpointed:
            return True
    return False


def test_resume_after_the_controller_is_killed(small_mltable, tmp_path):
    job = tmp_path / "job.yml"
    job.write_text(sequential_grid_job(small_mltable, epochs=6))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "visionsweep.cli"]
    proc = subprocess.Popen(cmd + ["run", str(job), "--output", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # one trial finished and the next two evaluations in, and Tune's state snapshot (what a resume
        # restores) has caught up with both
        while not (progress := interruptible(read_trials(run))) or not snapshot_shows(
                [f.read_text() for f in (run / "ray" / "sweep").glob("experiment_state-*.json")], *progress):
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            try:
                proc.wait(timeout=0.5)  # returns at once if the sweep ends
            except subprocess.TimeoutExpired:
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the controller and the Ray it started die at once
        proc.wait()

    before = read_trials(run)
    finished = {t.trial_id: t for t in before.values() if t.status == "completed"}
    interrupted = [t for t in before.values() if t.status == "running"]
    assert finished and interrupted and len(interrupted[0].metrics) < 6
    finished_files = {tid: (run / "trials" / tid / "metrics.jsonl").read_text() for tid in finished}

    out = subprocess.run(cmd + ["resume", str(run)], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    after = read_trials(run)
    # exactly the three grid points, each once
    assert sorted(t.params["learning_rate"] for t in after.values()) == [0.001, 0.002, 0.003]
    assert all(t.status == "completed" for t in after.values())
    # finished trials are kept as they were, not run again
    for tid, text in finished_files.items():
        assert (run / "trials" / tid / "metrics.jsonl").read_text() == text
        assert after[tid].started == finished[tid].started
    # the interrupted trial went on from its last checkpoint, not from scratch
    resumed = after[interrupted[0].trial_id]
    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    assert any(m.get("resumed_from_epoch", 0) >= 1 for m in resumed.metrics)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == 3 and (run / "best" / "model.safetensors").is_file()


def test_resume_does_not_train_a_trial_that_failed_on_its_settings_again(ray_session, small_mltable, tmp_path):
    from scheduler.controller import resume_run, run_job
    from tests.test_sweep import make_job

    # vits16r224 needs equal training and validation crops (§6.4): that trial fails on its settings
    job = make_job(small_mltable, """\
limits: {max_trials: 2}
search_space:
  - model_name: {type: choice, values: [resnet18, vits16r224]}
sweep: {sampling_algorithm: grid}
visionsweep: {tracking: {enabled: false}}
""", epochs=1)
    job.training_parameters.update(validation_resize_size=48, validation_crop_size=48)
    run = tmp_path / "run"
    run_job(job, run, echo=lambda s: None)
    first = {t.params["model_name"]: t for t in read_trials(run).values()}
    assert first["vits16r224"].status == "error" and first["vits16r224"].retry is False
    assert "training_crop_size == validation_crop_size" in first["vits16r224"].error

    resume_run(run, echo=lambda s: None)
    after = {t.params["model_name"]: t for t in read_trials(run).values()}
    failed = after["vits16r224"]
    assert failed.status == "error" and "not trained again" in failed.error and not failed.metrics
    assert after["resnet18"].status == "completed" and after["resnet18"].started == first["resnet18"].started
    # the resumed sweep's views (its own, and the one Tune unpickled with the experiment) are all stopped
    assert not [t for t in threading.enumerate() if t.name == "visionsweep-live-report"]

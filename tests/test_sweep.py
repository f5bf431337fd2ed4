"""End to end on a real local Ray: job YAML -> sweep -> run folder -> best/ -> predict."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_metrics
from scheduler.spec import parse_job
from tests.conftest import from_scratch
from trainers.errors import VisionsweepError

pytestmark = pytest.mark.ray

FAST_PARAMS = """\
training_parameters:
  number_of_epochs: {epochs}
  training_batch_size: {batch}
  validation_batch_size: 32
  training_crop_size: 32
  validation_resize_size: 32
  validation_crop_size: 32
  early_stopping: 0
"""


def make_job(data: Path, extra: str, epochs: int = 2, batch: int = 16, pretrained: bool = False):
    """A fast job on ``data`` (32 px, ``epochs``); from random initialisation unless ``pretrained``."""
    text = (f"$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json\ntype: automl\n"
            f"task: image_classification\ncompute: local\ntarget_column_name: label\n"
            f"training_data:\n  path: {data}\n  type: mltable\n"
            + FAST_PARAMS.format(epochs=epochs, batch=batch) + extra)
    return parse_job(text if pretrained else from_scratch(text), source=data.parent / "job.yml")


def test_grid_sweep_of_four_trials_two_at_a_time(ray_session, small_mltable, tiny_hf_classifier, tmp_path):
    # a built-in model and a Hugging Face classifier (a save_pretrained folder) in one search space (§4.3)
    job = make_job(small_mltable, f"""\
limits:
  max_trials: 4
  max_concurrent_trials: 2
search_space:
  - model_name: {{type: choice, values: [resnet18]}}
    learning_rate: {{type: choice, values: [0.001, 0.05]}}
  - model_name: {{type: choice, values: ["{tiny_hf_classifier}"]}}
    learning_rate: {{type: choice, values: [0.001, 0.05]}}
sweep:
  sampling_algorithm: grid
""")
    run = tmp_path / "run"
    result = run_job(job, run, echo=lambda s: None)

    # the run folder holds the job as submitted and as resolved
    assert (run / "job.yml").read_text() == job.text
    assert "mode: manual" in (run / "job.resolved.yaml").read_text()

    trials = sorted((run / "trials").iterdir())
    assert len(trials) == 4
    best_per_trial = {}
    for t in trials:
        doc = json.loads((t / "params.json").read_text())
        params = doc["sampled"]
        # params.json holds every hyperparameter the trial ran with, each under where it came from
        assert doc["fixed"]["number_of_epochs"] == 2 and "optimizer" in doc["default"]
        assert not set(doc["sampled"]) & (set(doc["fixed"]) | set(doc["default"]))
        metrics = read_metrics(t)
        status = json.loads((t / "status.json").read_text())
        assert status["status"] == "completed" and [m["epoch"] for m in metrics] == [1, 2]
        best_per_trial[t.name] = (max(m["accuracy"] for m in metrics), params)
    # every grid point ran exactly once
    assert sorted((p["model_name"], p["learning_rate"]) for _, p in best_per_trial.values()) == sorted([
        ("resnet18", 0.001), ("resnet18", 0.05), (str(tiny_hf_classifier), 0.001), (str(tiny_hf_classifier), 0.05)])

    # never more than 2 trials at once: start and end are stamped by one callback, in the order Tune's
    # events happened (whether two did run together is up to the machine, so it is not asserted)
    spans = [(json.loads((t / "status.json").read_text())["started"],
              json.loads((t / "status.json").read_text())["ended"]) for t in trials]
    assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) <= 2

    # leaderboard: best first, scores are each trial's best evaluation
    rows = list(csv.DictReader(open(run / "leaderboard.csv")))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    scores = [float(r["accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for r in rows:
        assert float(r["accuracy"]) == pytest.approx(best_per_trial[r["trial_id"]][0], abs=1e-6)

    # best/ is the package of the top trial, at its best evaluation
    assert result.best_trial == rows[0]["trial_id"]
    best_metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert best_metrics["accuracy"] == pytest.approx(scores[0], abs=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_trial"] == rows[0]["trial_id"] and summary["trials"] == 4

    # `visionsweep predict RUN/best IMAGE...` prints the service's response JSON
    images = sorted((small_mltable / "images").glob("*.png"))[:2]
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "predict", str(run / "best"), *map(str, images)],
                         capture_output=True, text=True, check=True)
    resp = json.loads(out.stdout)
    labels = json.loads((run / "best" / "labels.json").read_text())
    assert len(resp) == 2 and all(r["labels"] == labels and len(r["probs"]) == 3 for r in resp)
    assert all(abs(sum(r["probs"]) - 1) < 1e-4 for r in resp)
    # ... and so does the same model in the service's layout (§9.1), RUN/outputs/mlflow-model
    service = run / "outputs" / "mlflow-model"
    assert json.loads((service / "artifacts" / "settings.json").read_text()) == \
        json.loads((run / "best" / "settings.json").read_text())
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "predict", str(service), *map(str, images)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == resp


def test_single_trial_uses_the_fixed_model_and_defaults(ray_session, small_mltable, tmp_path):
    job = make_job(small_mltable, "  model_name: mobilenetv2\n", epochs=1)  # continues training_parameters
    assert job.mode == "single"
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    assert len(result.rows) == 1 and result.rows[0]["model_name"] == "mobilenetv2"
    cfg = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())
    assert cfg["model_name"] == "mobilenetv2" and cfg["optimizer"] == "sgd" and cfg["number_of_epochs"] == 1


def test_with_checkpoint_frequency_best_is_the_evaluation_the_leaderboard_reports(ray_session, small_mltable,
                                                                                   tmp_path):
    # checkpoint_frequency 5 with 2 epochs: no periodic checkpoint falls due, the best one still does
    job = make_job(small_mltable, "  checkpoint_frequency: 5\n", epochs=2)
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    exported = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert exported["accuracy"] == result.best_metric == result.rows[0]["accuracy"]
    evals = read_metrics(tmp_path / "run" / "trials" / result.best_trial)
    assert exported["epoch"] == max(evals, key=lambda m: m["accuracy"])["epoch"]


def test_timeout_stops_running_trials_and_keeps_their_results(ray_session, small_mltable, tmp_path):
    job = make_job(small_mltable, """\
limits:
  max_trials: 2
  max_concurrent_trials: 2
  timeout_minutes: 1
search_space:
  - model_name: {type: choice, values: [resnet18]}
    learning_rate: {type: choice, values: [0.01, 0.02]}
sweep:
  sampling_algorithm: grid
""", epochs=1000)
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    assert result.timed_out
    assert {r["status"] for r in result.rows} == {"stopped (timeout)"}
    # the stopped trials' evaluations are kept, and the best of them became best/
    assert all(r["epochs_run"] >= 1 for r in result.rows)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_timeout_covers_data_preparation(ray_session, small_mltable, tmp_path, monkeypatch):
    """limits.timeout_minutes is the whole job's: when preparing the data takes it all, no trial starts."""
    from scheduler.stages import context, prepare

    job = make_job(small_mltable, "limits:\n  timeout_minutes: 1\n", epochs=1)
    real_prepare, offset = prepare.prepare_job_data, []

    def slow_prepare(*args, **kwargs):  # the job's clock, moved as if preparation had taken 61 s
        out = real_prepare(*args, **kwargs)
        offset.append(61.0)
        return out

    monkeypatch.setattr(prepare, "prepare_job_data", slow_prepare)
    monkeypatch.setattr(context, "clock", lambda: time.time() + sum(offset))
    with pytest.raises(VisionsweepError, match=r"timeout_minutes \(1\) ran out before the first trial"):
        run_job(job, tmp_path / "run", echo=lambda s: None)
    assert (tmp_path / "run" / "data" / "summary.json").is_file()  # the prepared data is kept
    assert not (tmp_path / "run" / "trials").exists()
    assert not [t for t in threading.enumerate() if t.name == "visionsweep-live-report"]  # no view left running

"""AutoMode plans for its time limit, on a real local Ray: the cost probe measures an epoch, the budget fits three
trials into ``timeout_minutes``, every trial starts and finishes, and automode.json holds the plan and what it took.
The budget's arithmetic is tested with injected costs in tests/test_automode_budget.py."""

from __future__ import annotations

import json

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_trials
from scheduler.spec import parse_job

pytestmark = pytest.mark.ray

LIMIT_MINUTES = 2


def test_automode_fits_every_trial_into_its_time_limit(ray_session, small_mltable, mobilenet_weights, tmp_path):
    # only the trial budget and the time limit: AutoMode picks the model, epochs, input size and concurrency
    job = parse_job(f"""\
$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json
type: automl
task: image_classification
target_column_name: label
training_data: {{path: {small_mltable}, type: mltable}}
limits: {{max_trials: 3, timeout_minutes: {LIMIT_MINUTES}}}
visionsweep: {{weights_store: {mobilenet_weights.parent}}}
""", source=small_mltable.parent / "job.yml")
    assert job.mode == "automode"
    lines: list[str] = []
    result = run_job(job, tmp_path / "run", echo=lines.append)
    plan = json.loads((tmp_path / "run" / "automode.json").read_text())
    budget, actual = plan["budget"], plan["actual"]

    # the plan: measured here, all three trials, at 64 px (the 28 px images enlarged at most twice, no less than the
    # CNNs need), two at a time (2 CPUs, 1 per trial), predicted inside the limit
    assert budget["measured"] and budget["fits"] and budget["trials"] == plan["trials"] == 3
    assert budget["sizes"] == {"mobilenetv2": 64} and budget["concurrency"] == 2
    assert 3 <= budget["epochs"] <= 15 and plan["asha"]["max_epochs"] == budget["epochs"]
    assert budget["limit_minutes"] == LIMIT_MINUTES and budget["predicted_minutes"] <= LIMIT_MINUTES
    measured = budget["cost"]["models"]["mobilenetv2"]["seconds_per_image"]
    assert measured[0]["size"] == 64 and measured[0]["train"] > 0 and measured[0]["validation"] > 0
    assert budget["cost"]["start_s"] > 0 and budget["epoch_s"] > 0
    # said at start, before the trials
    said = next(i for i, ln in enumerate(lines) if ln.startswith("AutoMode budget: 3 trial(s) of up to "))
    assert said < next(i for i, ln in enumerate(lines) if ln.startswith("sweep: automode mode"))

    # every trial started with the plan's epochs and size, and ended on its own schedule (completed, or stopped by
    # ASHA at a rung), none by the timeout; the job ended inside its own limit
    trials = read_trials(tmp_path / "run")
    assert len(trials) == 3 and len(result.rows) == 3
    for t in trials.values():
        assert t.params["number_of_epochs"] == budget["epochs"] and t.params["training_crop_size"] == 64
        assert t.status == "completed" or t.status == "stopped (asha)", t.status
        assert len(t.metrics) >= plan["asha"]["grace_period"]
    assert actual["trials_started"] == actual["trials_finished"] == 3
    assert actual["trials_stopped_by_timeout"] == 0 and not actual["timed_out"] and not result.timed_out
    assert actual["within_limit"] and actual["minutes"] <= LIMIT_MINUTES

"""The run folder's trial records: what a resume trains again (pure logic on RunFolderCallback's files)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scheduler.recorder import RunFolderCallback
from scheduler.runfolder import read_trials


def errored(tmp_path, trial_id: str, exception_line: str):
    err = tmp_path / f"{trial_id}-error.txt"
    err.write_text(f"Traceback (most recent call last):\n  File \"x.py\", line 1\n{exception_line}\n")
    return SimpleNamespace(trial_id=trial_id, config={"learning_rate": 0.1}, error_file=str(err), last_result={})


def sweep(run_dir, trial) -> None:
    """One sweep (the first, or a resume) in which the trial ends in an error."""
    RunFolderCallback(run_dir, "accuracy", 1, echo=lambda s: None).on_trial_error(0, [], trial)


def test_a_transient_error_is_trained_again_by_one_resume_only(tmp_path):
    trial = errored(tmp_path, "t1", "ray.exceptions.RayActorError: The actor died unexpectedly")
    sweep(tmp_path, trial)
    rec = read_trials(tmp_path)["t1"]
    assert (rec.status, rec.retry, rec.errors) == ("error", True, 1)
    sweep(tmp_path, trial)  # the resume trained it again and it failed again: final
    rec = read_trials(tmp_path)["t1"]
    assert (rec.status, rec.retry, rec.errors) == ("error", False, 2)
    assert rec.error == "The actor died unexpectedly"


@pytest.mark.parametrize("line", ["trainers.errors.DataError: train.jsonl line 3: image not found",
                                  "visionsweep.SpecError: learning_rate must be > 0"])
def test_an_error_of_the_settings_or_data_is_final_at_once(tmp_path, line):
    sweep(tmp_path, errored(tmp_path, "t2", line))
    rec = read_trials(tmp_path)["t2"]
    assert (rec.retry, rec.errors) == (False, 1) and rec.error == line.split(": ", 1)[1]

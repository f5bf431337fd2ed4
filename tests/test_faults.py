"""Faults during a sweep (issue: scale-out): a trial's process dies -> it goes on from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_metrics
from tests.test_sweep import make_job

pytestmark = pytest.mark.ray


def _kill_once(run: Path, trigger: str, killed: list[int], lines: list[str]):
    """An ``echo`` for run_job that SIGKILLs the trial's own training process when a progress line has
    ``trigger``: the process whose pid the trial reported with that evaluation (``trainer_pid``: the trial's
    process, or rank 0 of a data-parallel group), read from the run folder, which has the row before the line."""

    def echo(line: str) -> None:
        lines.append(line)
        if killed or trigger not in line:
            return
        (trial,) = (run / "trials").iterdir()
        pid = read_metrics(trial)[-1]["trainer_pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return echo


def _trial(run):
    (d,) = (run / "trials").iterdir()
    metrics = read_metrics(d)
    return json.loads((d / "status.json").read_text()), metrics


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_trial_process_resumes_from_its_checkpoint(ray_session, small_mltable, tmp_path, workers):
    job = make_job(small_mltable, f"visionsweep:\n  workers_per_node: {workers}\n  cpus_per_trial: 0.5\n"
                                  "  trial_retries: 2\n  tracking: {enabled: false}\n", epochs=5, batch=8)
    job.training_parameters.update(model_name="resnet18")
    killed: list[int] = []
    lines: list[str] = []
    result = run_job(job, tmp_path / "run", echo=_kill_once(tmp_path / "run", "epoch 2:", killed, lines))

    assert killed and killed[0] != os.getpid()
    status, metrics = _trial(result.run_dir)
    assert status["status"] == "completed"
    # killed after epoch 2 was reported: training went on from the last checkpoint (epoch 1 or 2, whichever
    # Tune had registered), not from scratch, and the run folder keeps one line per epoch
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    # the process killed was the one training the trial: every epoch after the checkpoint came from a new one
    after = [m for m in metrics if m["epoch"] > metrics[-1]["resumed_from_epoch"]]
    assert after and all(m["trainer_pid"] != killed[0] for m in after)
    resumed = {m.get("resumed_from_epoch") for m in metrics if m["epoch"] >= 3}
    assert len(resumed) == 1 and resumed.pop() in (1, 2), [(m["epoch"], m.get("resumed_from_epoch")) for m in metrics]
    assert (result.run_dir / "best" / "model.safetensors").is_file()
    if workers == 1:  # Tune restarted the trial (a data-parallel group restarts inside Ray Train instead)
        assert any("retry " in ln and "last checkpoint" in ln for ln in lines)

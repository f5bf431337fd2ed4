"""A resumed sweep's early-termination decisions are the ones the uninterrupted sweep would make.

Tune never saves a scheduler's state: ``Tuner.restore`` unpickles the scheduler taken when the sweep
started. Both visionsweep schedulers rebuild their state from the run folder's per-trial metrics.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from scheduler.policies import create_policy
from scheduler.policies.ray_adapter import PolicyScheduler, RecordingASHA

METRIC = "accuracy"


def record(run_dir, trial_id: str, values: list[float]) -> None:
    """What RunFolderCallback leaves for a trial: one metrics line per evaluation (epoch = k)."""
    d = run_dir / "trials" / trial_id
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": k, METRIC: v}) + "\n"
                                             for k, v in enumerate(values, 1)))
    (d / "status.json").write_text(json.dumps({"status": "running"}))


def result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "training_iteration": epoch, METRIC: value}


def asha(run_dir) -> RecordingASHA:
    s = RecordingASHA(max_epochs=9, grace_period=1, reduction_factor=3, run_dir=str(run_dir))
    s.set_search_properties(METRIC, "max")
    return s


def test_a_restored_asha_rebuilds_its_rungs_from_the_run_folder(tmp_path):
    history = {"a": [0.9, 0.91], "b": [0.8], "c": [0.7]}
    started = pickle.dumps(asha(tmp_path))  # what Tuner.restore unpickles: taken before any result

    # the sweep that never stopped
    live = asha(tmp_path / "live")
    for tid, values in history.items():
        live.on_trial_add(None, SimpleNamespace(trial_id=tid))
        for k, v in enumerate(values, 1):
            live.on_trial_result(None, SimpleNamespace(trial_id=tid), result(k, v))

    # the sweep resumed after its controller died with the same history on disk
    for tid, values in history.items():
        record(tmp_path, tid, values)
    restored = pickle.loads(started)
    for s in (live, restored):
        s.on_trial_add(None, SimpleNamespace(trial_id="d"))
    low = result(1, 0.1)
    assert live.on_trial_result(None, SimpleNamespace(trial_id="d"), low) == TrialScheduler.STOP
    assert restored.on_trial_result(None, SimpleNamespace(trial_id="d"), low) == TrialScheduler.STOP
    assert json.loads((tmp_path / "trials" / "d" / "stopped.json").read_text())["by"] == "asha"
    # rung by rung, the same values as the uninterrupted scheduler
    assert [r for _, r in restored._brackets[0]._rungs] == [r for _, r in live._brackets[0]._rungs]


def test_a_restored_policy_scheduler_rebuilds_the_policy_history(tmp_path):
    def scheduler():
        s = PolicyScheduler(create_policy("median_stopping", evaluation_interval=1, delay_evaluation=2),
                            METRIC, run_dir=str(tmp_path))
        return s

    started = pickle.dumps(scheduler())
    for tid, values in {"a": [0.8, 0.85, 0.9], "b": [0.7, 0.8, 0.85]}.items():
        record(tmp_path, tid, values)
    restored = pickle.loads(started)
    trial = SimpleNamespace(trial_id="c")
    assert restored.on_trial_result(None, trial, result(1, 0.1)) == TrialScheduler.CONTINUE  # before the delay
    assert restored.on_trial_result(None, trial, result(2, 0.1)) == TrialScheduler.STOP  # below the median
    assert restored.policy.state_dict()["history"]["a"] == [0.8, 0.85, 0.9]


def test_a_stop_at_a_trials_last_report_leaves_it_completed(tmp_path):
    """A trial the rule would stop at its final epoch ran all its epochs: not stopped early, no marker."""
    import functools

    from scheduler.plan import trial_epochs

    s = PolicyScheduler(create_policy("bandit", slack_factor=0.2), METRIC,
                        run_dir=str(tmp_path), epochs_of=functools.partial(trial_epochs, "image_classification", {}))
    s = pickle.loads(pickle.dumps(s))  # Tune pickles the scheduler: so must the epochs function survive
    s.policy.add_history("good", [0.9, 0.9, 0.9])
    short = SimpleNamespace(trial_id="short", config={"model_name": "resnet18", "number_of_epochs": 2})
    assert s.on_trial_result(None, short, result(1, 0.1)) == TrialScheduler.STOP  # 0.1 < 0.9 / 1.2, epoch 1 of 2
    assert (tmp_path / "trials" / "short" / "stopped.json").exists()
    last = SimpleNamespace(trial_id="last", config={"model_name": "resnet18", "number_of_epochs": 1})
    assert s.on_trial_result(None, last, result(1, 0.1)) == TrialScheduler.CONTINUE  # the same, at its last epoch
    assert not (tmp_path / "trials" / "last" / "stopped.json").exists()

    # ASHA's budget is the longest trial's: a trial of fewer epochs that trails at its last one is complete too
    a = RecordingASHA(max_epochs=9, grace_period=1, reduction_factor=3, run_dir=str(tmp_path / "asha"),
                      epochs_of=functools.partial(trial_epochs, "image_classification", {}))
    a.set_search_properties(METRIC, "max")
    for tid, config, value in (("good", {"number_of_epochs": 9}, 0.9), ("short", {"number_of_epochs": 2}, 0.1),
                               ("last", {"number_of_epochs": 1}, 0.1)):
        trial = SimpleNamespace(trial_id=tid, config=config)
        a.on_trial_add(None, trial)
        decision = a.on_trial_result(None, trial, result(1, value))
        assert decision == (TrialScheduler.CONTINUE if tid == "good" else TrialScheduler.STOP)
    assert (tmp_path / "asha" / "trials" / "short" / "stopped.json").exists()
    assert not (tmp_path / "asha" / "trials" / "last" / "stopped.json").exists()

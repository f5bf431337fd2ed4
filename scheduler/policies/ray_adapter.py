"""Policies as Ray Tune trial schedulers.

``PolicyScheduler`` feeds a :class:`~scheduler.policies.base.Policy` with each trial's reports (k =
Tune's ``training_iteration``, i.e. the k-th report) and returns its decision to Tune, which stops the
trial, frees its resources and keeps its checkpoints and metrics. ``RecordingASHA`` is Ray's own
ASHA scheduler. Given a run folder, both record each trial they stop as a ``stopped.json`` marker
(policy, epoch reached) in the trial's folder.

Resume: Tune rebuilds a scheduler from the pickle taken when the sweep started (it never saves a
scheduler's state), so both rebuild theirs from the run folder before their first decision after a
restore: ``PolicyScheduler`` the policy's per-trial history, ``RecordingASHA`` the values recorded at
each rung. Decisions after a resume are then the ones an uninterrupted sweep would have made.
"""

from __future__ import annotations

import logging
from typing import Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from scheduler.policies.base import Decision, Policy
from scheduler.runfolder import mark_stopped

log = logging.getLogger(__name__)


def last_report(epochs_of: Callable[[dict], int] | None, trial, result: dict) -> bool:
    """Is ``result`` the trial's report of its last epoch? A stop there is a finish, not an early stop."""
    epoch = result.get("epoch")
    if epochs_of is None or epoch is None:
        return False
    try:
        return epoch >= epochs_of(trial.config)
    except Exception as e:  # the trial's own run reports a config it cannot resolve; the scheduler decides
        log.warning("trial %s: its number of epochs is unknown (%s); a stop at its last epoch counts as early",
                    trial.trial_id, e)
        return False


class PolicyScheduler(FIFOScheduler):
    """``epochs_of(config)``: the epochs a trial of that config trains. A policy may say stop at a trial's
    last report; that trial ran all its epochs, so it ends as completed, not as stopped early."""

    def __init__(self, policy: Policy, metric: str, mode: str = "max", run_dir: str | None = None,
                 epochs_of: Callable[[dict], int] | None = None):
        if mode != "max":
            raise ValueError(f"visionsweep policies maximise the primary metric, but got {mode=}.")
        super().__init__()
        self.policy, self._metric, self._mode, self.run_dir = policy, metric, mode, run_dir
        self.epochs_of = epochs_of
        self._reload = False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reload = True  # unpickled by Tuner.restore: catch up from the run folder

    def _catch_up(self) -> None:
        from scheduler.runfolder import read_trials

        self._reload = False
        if not self.run_dir:
            return
        for rec in read_trials(self.run_dir).values():
            values = [m[self._metric] for m in rec.metrics if self._metric in m]
            if values:
                self.policy.add_history(rec.trial_id, values, finished=rec.finished)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return (metric in (None, self._metric)) and (mode in (None, self._mode))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._reload:
            self._catch_up()
        if self._metric not in result or "training_iteration" not in result:
            return TrialScheduler.CONTINUE
        decision = self.policy.on_result(trial.trial_id, int(result["training_iteration"]), result[self._metric])
        if decision is Decision.STOP and not last_report(self.epochs_of, trial, result):
            mark_stopped(self.run_dir, trial.trial_id, self.policy.name, result.get("epoch"))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        self.policy.on_complete(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial):
        self.policy.on_remove(trial.trial_id)

    def debug_string(self) -> str:
        return f"visionsweep {self.policy.name} policy"


class RecordingASHA(ASHAScheduler):
    """Ray Tune's asynchronous successive halving, with the budget counted in epochs. ``epochs_of`` as for
    PolicyScheduler: a trial with fewer epochs than ``max_epochs`` stopped at its last one is complete."""

    name = "asha"

    def __init__(self, *, max_epochs: int, grace_period: int, reduction_factor: float, run_dir: str | None = None,
                 epochs_of: Callable[[dict], int] | None = None):
        # (the settings' defaults are the job file's: scheduler.policies.configs.AshaSettings)
        # metric and mode come from the Tuner (set_search_properties), which refuses a scheduler that has them
        super().__init__(time_attr="epoch", max_t=max_epochs, grace_period=grace_period,
                         reduction_factor=reduction_factor)
        self.run_dir, self.epochs_of = run_dir, epochs_of
        self._reload = False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reload = True  # unpickled by Tuner.restore: its rungs are the empty ones of the sweep's start

    def _catch_up(self) -> None:
        """Replay every recorded evaluation into the rungs: a rung keeps a trial's first value at or past
        its milestone, so replaying each trial's reports in epoch order rebuilds exactly what it held."""
        from types import SimpleNamespace

        from scheduler.runfolder import read_trials

        self._reload = False
        if not self.run_dir or not self._metric:
            return
        for rec in read_trials(self.run_dir).values():
            bracket = self._trial_info.get(rec.trial_id, self._brackets[0])
            ghost = SimpleNamespace(trial_id=rec.trial_id)
            for m in sorted((m for m in rec.metrics if self._metric in m and self._time_attr in m),
                            key=lambda m: m[self._time_attr]):
                bracket.on_result(ghost, m[self._time_attr], self._metric_op * m[self._metric])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._reload:
            self._catch_up()
        decision = super().on_trial_result(tune_controller, trial, result)
        # ASHA also returns STOP when a trial reaches max_t: that is a finished trial, not a stopped one.
        if decision == TrialScheduler.STOP and result.get("epoch", 0) < self._max_t \
                and not last_report(self.epochs_of, trial, result):
            mark_stopped(self.run_dir, trial.trial_id, self.name, result.get("epoch"))
        return decision

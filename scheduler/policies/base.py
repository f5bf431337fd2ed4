"""The early-termination interface: per-interval primary-metric streams in, CONTINUE / STOP out.

A policy sees, for each trial, the k-th report of its primary metric (k = 1, 2, ...: one report is one
interval, SPEC §8.3) and decides at *evaluation points* only:

    E = { k >= 1 : k mod evaluation_interval == 0 and k >= delay_evaluation }      (§8.4)

Every policy here maximises (all four image metrics are higher-is-better, §1). Policies are pure logic
with no Ray inside, so they are unit-tested on scripted streams; ``scheduler.policies.ray_adapter``
turns one into a Ray Tune ``TrialScheduler``.

NaN rule: a trial whose reported value is NaN is stopped at its next evaluation point (it has
diverged); NaN values never enter other trials' statistics.

Warm start (§8.7, random/grid): ``add_history`` preloads an earlier sweep's per-interval values, which
then count in every statistic (best at interval k, medians, rankings) as finished trials.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, Iterable


class Decision(str, Enum):
    CONTINUE = "continue"
    STOP = "stop"


class Policy(ABC):
    """Base of the spec's policies: history bookkeeping and the evaluation-point rule."""

    name: str = ""

    def __init__(self, evaluation_interval: int = 1, delay_evaluation: int = 0):
        if evaluation_interval < 1:
            raise ValueError(f"evaluation_interval must be >= 1, but got {evaluation_interval=}.")
        if delay_evaluation < 0:
            raise ValueError(f"delay_evaluation must be >= 0, but got {delay_evaluation=}.")
        self.evaluation_interval = evaluation_interval
        self.delay_evaluation = delay_evaluation
        self._history: dict[str, list[float]] = {}
        self._finished: set[str] = set()

    def is_evaluation_point(self, k: int) -> bool:
        return k >= 1 and k % self.evaluation_interval == 0 and k >= self.delay_evaluation

    def on_result(self, trial_id: str, k: int, value: float) -> Decision:
        """Record the trial's k-th report and decide; called once per report, k = 1, 2, ..."""
        h = self._history.setdefault(trial_id, [])
        del h[k - 1:]  # a restored trial may report interval k again: the newest value wins
        h.extend([math.nan] * (k - 1 - len(h)))
        h.append(float(value))
        if not self.is_evaluation_point(k):
            return Decision.CONTINUE
        if math.isnan(value):
            return Decision.STOP
        return Decision.STOP if self._should_stop(trial_id, k) else Decision.CONTINUE

    def on_complete(self, trial_id: str) -> None:
        self._finished.add(trial_id)

    def on_remove(self, trial_id: str) -> None:
        self._finished.add(trial_id)

    def add_history(self, trial_id: str, values: Iterable[float], finished: bool = True) -> None:
        """Preload a trial's reports: an earlier sweep's (warm start) or this sweep's before a restart."""
        self._history[trial_id] = [float(v) for v in values]
        if finished:
            self._finished.add(trial_id)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self._history.items()}, "finished": sorted(self._finished)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = {k: list(v) for k, v in state["history"].items()}
        self._finished = set(state["finished"])

    # helpers for subclasses -------------------------------------------------------------------
    def _reached(self, k: int, include_finished: bool = True) -> dict[str, list[float]]:
        """Trials that have a (non-NaN) value at interval k."""
        return {t: h for t, h in self._history.items()
                if len(h) >= k and not math.isnan(h[k - 1]) and (include_finished or t not in self._finished)}

    @staticmethod
    def _best_so_far(h: list[float], k: int) -> float:
        vals = [v for v in h[:k] if not math.isnan(v)]
        return max(vals) if vals else -math.inf

    @abstractmethod
    def _should_stop(self, trial_id: str, k: int) -> bool:
        """The policy's rule at evaluation point ``k``; the trial's value at k is known and not NaN."""

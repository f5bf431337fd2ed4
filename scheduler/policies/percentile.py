"""Median stopping and truncation selection (SPEC §8.4, §13 A8/A9): both compare a trial with the
population of trials that have reported interval k.

* ``MedianStoppingRule``: M_k = median, over every trial that reported interval k, of its running
  average over intervals 1..k; trial r stops when its best value so far is below M_k.
* ``TruncationSelectionRule``: rank the trials that reported interval k by their value at k; the
  lowest ``floor(n * truncation_percentage / 100)`` stop. Ties are broken in the trial's favour: it
  stops only when at least ``n - n_cut`` trials are strictly better, so of two equal trials neither
  is cancelled for the other. With ``exclude_finished_jobs`` finished trials are left out.
"""

from __future__ import annotations

import math
import statistics

from scheduler.policies.base import Policy


class MedianStoppingRule(Policy):
    name = "median_stopping"

    def _should_stop(self, trial_id: str, k: int) -> bool:
        averages = [statistics.fmean(v for v in h[:k] if not math.isnan(v)) for h in self._reached(k).values()]
        return self._best_so_far(self._history[trial_id], k) < statistics.median(averages)


class TruncationSelectionRule(Policy):
    name = "truncation_selection"

    def __init__(self, truncation_percentage: int, *, evaluation_interval: int = 1, delay_evaluation: int = 0,
                 exclude_finished_jobs: bool = False):
        super().__init__(evaluation_interval, delay_evaluation)
        if not 1 <= truncation_percentage <= 99:
            raise ValueError(f"truncation_percentage must be between 1 and 99, but got {truncation_percentage=}.")
        self.truncation_percentage = truncation_percentage
        self.exclude_finished_jobs = exclude_finished_jobs

    def _should_stop(self, trial_id: str, k: int) -> bool:
        population = self._reached(k, include_finished=not self.exclude_finished_jobs)
        population[trial_id] = self._history[trial_id]
        n_cut = math.floor(len(population) * self.truncation_percentage / 100)
        if n_cut == 0:
            return False
        mine = self._history[trial_id][k - 1]
        better = sum(h[k - 1] > mine for h in population.values())
        # In the bottom n_cut even when ties are ranked in its favour.
        return better >= len(population) - n_cut

"""Bandit policy (SPEC §8.4, §13 A7).

At evaluation point k, let ``B_k`` be the best value any trial reported at interval k, and ``c_r``
trial r's best value over intervals 1..k. Trial r stops when

* ``slack_factor``: ``c_r < B_k / (1 + slack_factor)``
* ``slack_amount``: ``c_r < B_k - slack_amount``

Example: slack_factor 0.2, best 0.8 at interval 10 -> trials whose best is below 0.8 / 1.2 = 0.667 stop.
"""

from __future__ import annotations

from scheduler.policies.base import Policy


class BanditRule(Policy):
    name = "bandit"

    def __init__(self, slack_factor: float | None = None, slack_amount: float | None = None, *,
                 evaluation_interval: int = 1, delay_evaluation: int = 0):
        super().__init__(evaluation_interval, delay_evaluation)
        if (slack_factor is None) == (slack_amount is None):
            raise ValueError(f"exactly one of slack_factor and slack_amount must be given, but got "
                             f"{slack_factor=}, {slack_amount=}.")
        for name, v in (("slack_factor", slack_factor), ("slack_amount", slack_amount)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0, but got {v}.")
        self.slack_factor, self.slack_amount = slack_factor, slack_amount

    def threshold(self, best_at_k: float) -> float:
        if self.slack_factor is not None:
            return best_at_k / (1.0 + self.slack_factor)
        return best_at_k - self.slack_amount

    def _should_stop(self, trial_id: str, k: int) -> bool:
        best_at_k = max(h[k - 1] for h in self._reached(k).values())
        return self._best_so_far(self._history[trial_id], k) < self.threshold(best_at_k)

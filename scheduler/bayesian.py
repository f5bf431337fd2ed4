"""Bayesian sampling (SPEC §8.2): Optuna's TPE through Ray Tune's ``OptunaSearch``.

Only ``choice``, ``uniform`` and ``quniform`` over a single sub-space are allowed (the job validator
enforces it). Earlier sweeps' trials (warm start) become completed observations of the Optuna study,
so they shape the very first suggestions. Fewer than 20 x (number of tuned parameters) trials draws
a warning, as the spec recommends.

Why ``quniform`` is searched over an index: the spec's ``round(uniform(lo, hi) / q) * q`` yields the
multiples k*q of :meth:`~scheduler.space.QUniform.indices`, which need not lie on ``lo + j*q``
(Optuna's stepped floats) nor have bounds divisible by q (Ray's ``tune.quniform`` refuses those, so
such a job used to pass validation and crash at the first suggestion). Optuna draws the integer k
and the suggestion carries k*q, so random and Bayesian sampling of one YAML draw from one set of values.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from scheduler.space import Choice, QUniform, Uniform
from scheduler.warmstart import PriorTrial

TRIALS_PER_PARAMETER = 20


def to_optuna(dist) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution searched for one parameter (a ``quniform``'s is that of its index k)."""
    if isinstance(dist, Choice):
        return optuna.distributions.CategoricalDistribution(dist.values)
    if isinstance(dist, QUniform):
        lo, hi = dist.indices()
        return optuna.distributions.IntDistribution(lo, hi)
    if isinstance(dist, Uniform):
        return optuna.distributions.FloatDistribution(dist.min_value, dist.max_value)
    raise ValueError(f"bayesian sampling takes choice, uniform and quniform, but got {dist.type!r}.")


class BayesianSearcher(OptunaSearch):
    """``OptunaSearch`` over a spec sub-space; suggestions carry values, the study sees ``quniform`` indices."""

    def __init__(self, sub: dict[str, Any], *, metric: str, seed: int, max_trials: int,
                 priors: list[PriorTrial] = ()):
        self._quantised = {k: d for k, d in sub.items() if isinstance(d, QUniform)}
        space = {k: to_optuna(d) for k, d in sub.items()}
        points, rewards = [], []
        for p in priors:  # an earlier trial counts only when it is a point of this space
            point = self._searched(p.params, sub) if set(p.params) == set(sub) else None
            if point is not None:
                points.append(point)
                rewards.append(p.best)
        # Few random start-up trials: a small image-sweep budget should start using what it learns early.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, max_trials // 5)))
        super().__init__(space=space, metric=metric, mode="max", sampler=sampler,
                         points_to_evaluate=points or None, evaluated_rewards=rewards or None)

    def _searched(self, params: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any] | None:
        """An earlier trial's values as the study's parameters (a ``quniform`` value -> its index), or
        None when one of them is outside this space."""
        out = {}
        for k, d in sub.items():
            v = params[k]
            if isinstance(d, Choice):
                if v not in d.values:
                    return None
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                return None
            elif isinstance(d, QUniform):
                lo, hi = d.indices()
                idx = round(v / d.q)
                if not lo <= idx <= hi or abs(d.value(idx) - v) > 1e-9 * max(1.0, abs(v)):
                    return None  # not on this space's grid (other bounds or another q)
                v = idx
            elif not d.min_value <= v <= d.max_value:
                return None
            out[k] = v
        return out

    def suggest(self, trial_id: str) -> dict | None:
        cfg = super().suggest(trial_id)
        if isinstance(cfg, dict):
            cfg = {k: self._quantised[k].value(v) if k in self._quantised else v for k, v in cfg.items()}
        return cfg


def budget_warning(space: list[dict[str, Any]], max_trials: int) -> str | None:
    tuned = sum(1 for d in space[0].values() if not (isinstance(d, Choice) and len(d.values) == 1))
    if tuned and max_trials < TRIALS_PER_PARAMETER * tuned:
        return (f"bayesian sampling of {tuned} parameter(s) works best with at least "
                f"{TRIALS_PER_PARAMETER * tuned} trials (limits.max_trials is {max_trials})")
    return None


def make_searcher(space: list[dict[str, Any]], metric: str, seed: int, max_trials: int,
                  priors: list[PriorTrial] = ()) -> BayesianSearcher:
    return BayesianSearcher(space[0], metric=metric, seed=seed, max_trials=max_trials, priors=priors)

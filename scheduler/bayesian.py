"""Bayesian sampling (SPEC §8.2): Optuna's TPE through Ray Tune's ``OptunaSearch``.

Only ``choice``, ``uniform`` and ``quniform`` over a single sub-space are allowed (the job validator
enforces it). Earlier sweeps' trials (warm start) become completed observations of the Optuna study,
so they shape the very first suggestions. Fewer than 20 x (number of tuned parameters) trials draws
a warning, as the spec recommends.
"""

from __future__ import annotations

from typing import Any

from scheduler.space import Choice, QUniform, Uniform
from scheduler.warmstart import PriorTrial

TRIALS_PER_PARAMETER = 20


def to_tune(dist) -> Any:
    from ray import tune

    if isinstance(dist, Choice):
        return tune.choice(dist.values)
    if isinstance(dist, QUniform):
        return tune.quniform(dist.min_value, dist.max_value, dist.q)
    if isinstance(dist, Uniform):
        return tune.uniform(dist.min_value, dist.max_value)
    raise ValueError(f"bayesian sampling takes choice, uniform and quniform, but got {dist.type!r}.")


def budget_warning(space: list[dict[str, Any]], max_trials: int) -> str | None:
    tuned = sum(1 for d in space[0].values() if not (isinstance(d, Choice) and len(d.values) == 1))
    if tuned and max_trials < TRIALS_PER_PARAMETER * tuned:
        return (f"bayesian sampling of {tuned} parameter(s) works best with at least "
                f"{TRIALS_PER_PARAMETER * tuned} trials (limits.max_trials is {max_trials})")
    return None


def make_searcher(space: list[dict[str, Any]], metric: str, seed: int, max_trials: int,
                  priors: list[PriorTrial] = ()):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sub = space[0]
    points, rewards = [], []
    for p in priors:
        if set(p.params) == set(sub):
            points.append({k: p.params[k] for k in sub})
            rewards.append(p.best)
    # Few random start-up trials: a small image-sweep budget should start using what it learns early.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, max_trials // 5)))
    return OptunaSearch(space={k: to_tune(d) for k, d in sub.items()}, metric=metric, mode="max", sampler=sampler,
                        points_to_evaluate=points or None, evaluated_rewards=rewards or None)

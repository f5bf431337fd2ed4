"""Ray Tune searchers for the spec's ``random`` and ``grid`` sampling (SPEC §8.1, §8.2).

Why a searcher of our own: the spec's conditional spaces (a list of per-model sub-spaces), its
distribution formulas (``loguniform`` with exponent bounds, ``lognormal``, ``qlognormal``, ``randint``
with ``upper`` only) and "grid = union of per-sub-space products, stop when exhausted" are not what
Ray's ``BasicVariantGenerator`` does. ``Searcher`` is Ray Tune's extension point for this, so trials,
concurrency, time budget, schedulers and resume stay Ray's. Bayesian sampling plugs in here too.
"""

from __future__ import annotations

import pickle
from typing import Any, Optional

import numpy as np
from ray.tune.search import Searcher

from scheduler.space import grid_configs, sample_config


class SpaceSearcher(Searcher):
    """Suggests configurations from a spec search space; ``None`` space = one trial of the defaults.

    ``first``: configurations to run before any sampled one (random only), e.g. AutoMode's baseline.
    """

    def __init__(self, space: list[dict[str, Any]] | None, algorithm: str, max_trials: int, seed: int = 0,
                 metric: Optional[str] = None, mode: Optional[str] = None, first: list[dict[str, Any]] = ()):
        super().__init__(metric=metric, mode=mode)
        if algorithm not in ("random", "grid"):
            raise ValueError(f"SpaceSearcher samples 'random' or 'grid', but got {algorithm=}")
        self._space = space or [{}]
        self._grid = grid_configs(self._space) if algorithm == "grid" else None
        self._max = max_trials if self._grid is None else min(max_trials, len(self._grid))
        self._rng = np.random.default_rng(seed)
        self._first = [dict(c) for c in first] if self._grid is None else []
        self._n = 0

    @property
    def total_trials(self) -> int:
        return self._max

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self._n >= self._max:
            return Searcher.FINISHED
        if self._grid is not None:
            cfg = dict(self._grid[self._n])
        elif self._n < len(self._first):
            cfg = dict(self._first[self._n])
        else:
            cfg = sample_config(self._space, self._rng)
        self._n += 1
        return cfg

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

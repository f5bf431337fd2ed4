"""Search-space distributions (SPEC §3.4, §8.1, §14) and how a conditional space is sampled.

A ``search_space`` is a list of sub-spaces; each maps a hyperparameter name to a distribution. Values
follow the spec's formulas exactly, which differ from Ray Tune's and numpy's own conventions in two
places worth knowing:

* ``loguniform`` / ``qloguniform`` take **natural-log bounds** (exponents): ``exp(uniform(lo, hi))``.
* quantised forms are ``round(x / q) * q`` with no clipping to the bounds.

``randint`` (v2 schema) takes ``upper`` only and yields an integer in ``[0, upper)``.

Random sampling over a list of sub-spaces picks a sub-space uniformly, then samples inside it (§8.2).
Grid sampling expands each sub-space's Cartesian product (``choice`` only) and concatenates them.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def is_choice(self) -> bool:
        return False


def _q(x: float, q: float) -> float:
    v = float(np.round(x / q) * q)
    # An integral quantum on an integral value gives an int (batch sizes, epochs ...).
    return int(round(v)) if float(q).is_integer() and float(v).is_integer() else v


class Choice(_Dist):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def sample(self, rng):
        return self.values[int(rng.integers(len(self.values)))]

    @property
    def is_choice(self) -> bool:
        return True


class _Bounded(_Dist):
    min_value: float
    max_value: float

    @model_validator(mode="after")
    def _order(self):
        if not self.min_value < self.max_value:
            raise ValueError(f"min_value must be < max_value, but got min_value={self.min_value}, "
                             f"max_value={self.max_value}")
        return self


class _Quantised(BaseModel):
    q: float = Field(gt=0)


class Uniform(_Bounded):
    type: Literal["uniform"]

    def sample(self, rng):
        return float(rng.uniform(self.min_value, self.max_value))


class QUniform(_Bounded, _Quantised):
    type: Literal["quniform"]

    def sample(self, rng):
        return _q(rng.uniform(self.min_value, self.max_value), self.q)


class LogUniform(_Bounded):
    type: Literal["loguniform"]

    def sample(self, rng):
        return float(math.exp(rng.uniform(self.min_value, self.max_value)))


class QLogUniform(_Bounded, _Quantised):
    type: Literal["qloguniform"]

    def sample(self, rng):
        return _q(math.exp(rng.uniform(self.min_value, self.max_value)), self.q)


class _Gaussian(_Dist):
    mu: float
    sigma: float = Field(gt=0)


class Normal(_Gaussian):
    type: Literal["normal"]

    def sample(self, rng):
        return float(rng.normal(self.mu, self.sigma))


class QNormal(_Gaussian, _Quantised):
    type: Literal["qnormal"]

    def sample(self, rng):
        return _q(rng.normal(self.mu, self.sigma), self.q)


class LogNormal(_Gaussian):
    type: Literal["lognormal"]

    def sample(self, rng):
        return float(math.exp(rng.normal(self.mu, self.sigma)))


class QLogNormal(_Gaussian, _Quantised):
    type: Literal["qlognormal"]

    def sample(self, rng):
        return _q(math.exp(rng.normal(self.mu, self.sigma)), self.q)


class RandInt(_Dist):
    type: Literal["randint"]
    upper: int = Field(gt=0, description="exclusive upper bound; values are 0 .. upper-1")

    def sample(self, rng):
        return int(rng.integers(0, self.upper))


Distribution = Annotated[
    Union[Choice, Uniform, QUniform, LogUniform, QLogUniform, Normal, QNormal, LogNormal, QLogNormal, RandInt],
    Field(discriminator="type"),
]
DISTRIBUTION_TYPES = ("choice", "uniform", "quniform", "loguniform", "qloguniform",
                      "normal", "qnormal", "lognormal", "qlognormal", "randint")

SubSpace = dict[str, Any]  # name -> Distribution


def sample_config(space: list[SubSpace], rng: np.random.Generator) -> dict[str, Any]:
    """One random draw: a sub-space chosen uniformly, then every distribution in it sampled."""
    sub = space[int(rng.integers(len(space)))] if len(space) > 1 else space[0]
    return {name: dist.sample(rng) for name, dist in sub.items()}


def grid_configs(space: list[SubSpace]) -> list[dict[str, Any]]:
    """Every grid point: the union (in order) of each sub-space's Cartesian product of ``choice`` values."""
    out: list[dict[str, Any]] = []
    for sub in space:
        names = list(sub)
        for combo in itertools.product(*(sub[n].values for n in names)):
            out.append(dict(zip(names, combo)))
    return out

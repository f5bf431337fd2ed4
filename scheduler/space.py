"""Search-space distributions (SPEC §3.4, §8.1, §14) and how a conditional space is sampled.

A ``search_space`` is a list of sub-spaces; each maps a hyperparameter name to a distribution. Values
follow the spec's formulas exactly, which differ from Ray Tune's and numpy's own conventions in two
places worth knowing:

* ``loguniform`` / ``qloguniform`` take **natural-log bounds** (exponents): ``exp(uniform(lo, hi))``.
* quantised forms are ``round(x / q) * q`` with no clipping to the bounds: ``quniform(1, 10, q=4)``
  yields 0, 4 or 8 (:meth:`QUniform.indices` says which multiples of q; the Bayesian sampler
  draws from exactly these, so one YAML means one set of values whichever sampler runs it).

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

    @property
    def integral(self) -> bool:
        """Every value it produces is an integer (what an integer hyperparameter needs): the quantised
        forms with an integral q, and randint."""
        q = getattr(self, "q", None)
        return q is not None and float(q).is_integer()

    def extremes(self) -> tuple[tuple[float, str], tuple[float, str]] | None:
        """The smallest and largest values it produces, each with the formula that gives it (for errors);
        None when it is unbounded (the normal family) or not numeric (choice)."""
        return None


def _q_value(k: float, q: float) -> float:
    """The k-th multiple of q, as both samplers produce it."""
    v = float(k * q)
    # An integral quantum on an integral value gives an int (batch sizes, epochs ...).
    return int(round(v)) if float(q).is_integer() and float(v).is_integer() else v


def _q(x: float, q: float) -> float:
    return _q_value(np.round(x / q), q)


def _q_indices(lo: float, hi: float, q: float) -> tuple[int, int]:
    """The k whose multiple k*q is ``round(x / q) * q`` for some x in [lo, hi) with positive probability:
    x/q must fall in (k - 0.5, k + 0.5). Ratios are snapped to 1e-9 so 0.25 / 0.1 counts as 2.5."""
    a, b = round(lo / q, 9), round(hi / q, 9)
    return math.floor(a - 0.5) + 1, math.ceil(b + 0.5) - 1


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

    def extremes(self):
        return (self.min_value, "min_value"), (self.max_value, "max_value")


class QUniform(_Bounded, _Quantised):
    """``round(uniform(min_value, max_value) / q) * q``: the multiples k*q for k in :meth:`indices`."""

    type: Literal["quniform"]

    def sample(self, rng):
        return _q(rng.uniform(self.min_value, self.max_value), self.q)

    def indices(self) -> tuple[int, int]:
        """The first and last k of the values k*q it produces (both inclusive)."""
        return _q_indices(self.min_value, self.max_value, self.q)

    def value(self, k: int) -> float:
        return _q_value(k, self.q)

    def extremes(self):
        lo, hi = self.indices()
        return (self.value(lo), "round(min_value / q) * q"), (self.value(hi), "round(max_value / q) * q")


class LogUniform(_Bounded):
    type: Literal["loguniform"]

    def sample(self, rng):
        return float(math.exp(rng.uniform(self.min_value, self.max_value)))

    def extremes(self):
        return (math.exp(self.min_value), "exp(min_value)"), (math.exp(self.max_value), "exp(max_value)")


class QLogUniform(_Bounded, _Quantised):
    type: Literal["qloguniform"]

    def sample(self, rng):
        return _q(math.exp(rng.uniform(self.min_value, self.max_value)), self.q)

    def extremes(self):
        lo, hi = _q_indices(math.exp(self.min_value), math.exp(self.max_value), self.q)
        return ((_q_value(lo, self.q), "round(exp(min_value) / q) * q"),
                (_q_value(hi, self.q), "round(exp(max_value) / q) * q"))


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


class Randint(_Dist):
    type: Literal["randint"]
    upper: int = Field(gt=0, description="exclusive upper bound; values are 0 .. upper-1")

    def sample(self, rng):
        return int(rng.integers(0, self.upper))

    @property
    def integral(self) -> bool:
        return True

    def extremes(self):
        return (0, "0"), (self.upper - 1, "upper - 1")


Distribution = Annotated[
    Union[Choice, Uniform, QUniform, LogUniform, QLogUniform, Normal, QNormal, LogNormal, QLogNormal, Randint],
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

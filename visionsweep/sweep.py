"""The service SDK's sweep objects (``azure.ai.ml.sweep``): the search-space distributions of SPEC §8.1 and the
early-termination policies of §8.4, by the same names and arguments.

Each object is only a way to write the job file's YAML: ``_to_yaml()`` gives the mapping the CLI job file has under
``search_space`` or ``sweep.early_termination``, and the job is validated from that (``scheduler.spec``), so a
distribution or policy means here exactly what it means in a YAML file, errors included. Bounds follow the spec:
``LogUniform`` and ``QLogUniform`` take natural-log bounds (``LogUniform(-6.9, -2.3)`` spans 0.001..0.1),
quantised forms round to multiples of ``q``, ``Randint(upper)`` yields 0..upper-1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


class _SweepObject:
    """A distribution or policy: its fields written under its ``type`` (fields left None are not written, so the
    job file's defaults apply). Equality and repr are the dataclasses'."""

    type: ClassVar[str]

    def _to_yaml(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)
                                      if getattr(self, f.name) is not None}}


@dataclass
class Choice(_SweepObject):
    """One of ``values`` (any YAML values: numbers, strings, booleans)."""

    type: ClassVar[str] = "choice"
    values: list[Any] | None = None

    def __post_init__(self):
        if self.values is not None:
            self.values = list(self.values)


@dataclass
class Uniform(_SweepObject):
    """Uniform on [min_value, max_value)."""

    type: ClassVar[str] = "uniform"
    min_value: float | None = None
    max_value: float | None = None


@dataclass
class LogUniform(Uniform):
    """``exp(uniform(min_value, max_value))``: the bounds are natural logarithms."""

    type: ClassVar[str] = "loguniform"


@dataclass
class QUniform(_SweepObject):
    """``round(uniform(min_value, max_value) / q) * q``."""

    type: ClassVar[str] = "quniform"
    min_value: float | None = None
    max_value: float | None = None
    q: float | None = None


@dataclass
class QLogUniform(QUniform):
    """``round(exp(uniform(min_value, max_value)) / q) * q``."""

    type: ClassVar[str] = "qloguniform"


@dataclass
class Normal(_SweepObject):
    """Normal with mean ``mu`` and standard deviation ``sigma``."""

    type: ClassVar[str] = "normal"
    mu: float | None = None
    sigma: float | None = None


@dataclass
class LogNormal(Normal):
    """``exp(normal(mu, sigma))``."""

    type: ClassVar[str] = "lognormal"


@dataclass
class QNormal(_SweepObject):
    """``round(normal(mu, sigma) / q) * q``."""

    type: ClassVar[str] = "qnormal"
    mu: float | None = None
    sigma: float | None = None
    q: float | None = None


@dataclass
class QLogNormal(QNormal):
    """``round(exp(normal(mu, sigma)) / q) * q``."""

    type: ClassVar[str] = "qlognormal"


@dataclass
class Randint(_SweepObject):
    """An integer in [0, upper)."""

    type: ClassVar[str] = "randint"
    upper: int | None = None


@dataclass(kw_only=True)
class _Policy(_SweepObject):
    """Every policy is checked every ``evaluation_interval`` evaluations (default 1) after the first
    ``delay_evaluation`` (default 0)."""

    evaluation_interval: int | None = None
    delay_evaluation: int | None = None


@dataclass(kw_only=True)
class BanditPolicy(_Policy):
    """Stops a trial whose primary metric trails the best by more than ``slack_factor`` (a ratio) or
    ``slack_amount`` (an absolute margin; give one of the two)."""

    type: ClassVar[str] = "bandit"
    slack_factor: float | None = None
    slack_amount: float | None = None


@dataclass(kw_only=True)
class MedianStoppingPolicy(_Policy):
    """Stops a trial whose best metric is below the median of the running averages of all trials."""

    type: ClassVar[str] = "median_stopping"


@dataclass(kw_only=True)
class TruncationSelectionPolicy(_Policy):
    """At each interval, cancels the lowest ``truncation_percentage`` % of trials (1..99)."""

    type: ClassVar[str] = "truncation_selection"
    truncation_percentage: int | None = None
    exclude_finished_jobs: bool | None = None


@dataclass(kw_only=True)
class AshaPolicy(_SweepObject):
    """Asynchronous successive halving, counted in epochs (visionsweep's own policy, ``type: asha``; the one
    AutoMode uses): trials are compared at ``grace_period * reduction_factor**i`` epochs and the top
    ``1/reduction_factor`` go on."""

    type: ClassVar[str] = "asha"
    grace_period: int | None = None
    reduction_factor: float | None = None
    max_epochs: int | None = None


DISTRIBUTIONS = {c.type: c for c in (Choice, Uniform, LogUniform, QUniform, QLogUniform, Normal, LogNormal, QNormal,
                                     QLogNormal, Randint)}
POLICIES = {c.type: c for c in (BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, AshaPolicy)}


def from_yaml(d: dict[str, Any], registry: dict[str, type]) -> _SweepObject:
    """The object a YAML mapping with this ``type`` stands for (the job file was validated first)."""
    d = dict(d)
    cls = registry[d.pop("type")]
    return cls(**d)


__all__ = ["AshaPolicy", "BanditPolicy", "Choice", "LogNormal", "LogUniform", "MedianStoppingPolicy", "Normal",
           "QLogNormal", "QLogUniform", "QNormal", "QUniform", "Randint", "TruncationSelectionPolicy", "Uniform"]

"""The service SDK's sweep objects (``azure.ai.ml.sweep``): the search-space distributions of SPEC §8.1 and the
early-termination policies of §8.4, by the same names and arguments.

Each object is only a way to write the job file's YAML: ``_to_yaml()`` gives the mapping the CLI job file has under
``search_space`` or ``sweep.early_termination``, and the job is validated from that (``scheduler.spec``), so a
distribution or policy means here exactly what it means in a YAML file, errors included. Bounds follow the spec:
``LogUniform`` and ``QLogUniform`` take natural-log bounds (``LogUniform(-6.9, -2.3)`` spans 0.001..0.1),
quantised forms round to multiples of ``q``, ``Randint(upper)`` yields 0..upper-1.
"""

from __future__ import annotations

from typing import Any, ClassVar


class _SweepObject:
    """A distribution or policy: keyword fields written under its ``type`` (fields left None are not written,
    so the job file's defaults apply)."""

    type: ClassVar[str]
    _fields: ClassVar[tuple[str, ...]]

    def _to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        out.update({k: getattr(self, k) for k in self._fields if getattr(self, k) is not None})
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._to_yaml() == self._to_yaml()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields if getattr(self, k) is not None)
        return f"{type(self).__name__}({args})"


class Choice(_SweepObject):
    """One of ``values`` (any YAML values: numbers, strings, booleans)."""

    type, _fields = "choice", ("values",)

    def __init__(self, values: list[Any] | None = None):
        self.values = list(values) if values is not None else None


class Uniform(_SweepObject):
    """Uniform on [min_value, max_value)."""

    type, _fields = "uniform", ("min_value", "max_value")

    def __init__(self, min_value: float | None = None, max_value: float | None = None):
        self.min_value, self.max_value = min_value, max_value


class LogUniform(Uniform):
    """``exp(uniform(min_value, max_value))``: the bounds are natural logarithms."""

    type = "loguniform"


class QUniform(_SweepObject):
    """``round(uniform(min_value, max_value) / q) * q``."""

    type, _fields = "quniform", ("min_value", "max_value", "q")

    def __init__(self, min_value: float | None = None, max_value: float | None = None, q: float | None = None):
        self.min_value, self.max_value, self.q = min_value, max_value, q


class QLogUniform(QUniform):
    """``round(exp(uniform(min_value, max_value)) / q) * q``."""

    type = "qloguniform"


class Normal(_SweepObject):
    """Normal with mean ``mu`` and standard deviation ``sigma``."""

    type, _fields = "normal", ("mu", "sigma")

    def __init__(self, mu: float | None = None, sigma: float | None = None):
        self.mu, self.sigma = mu, sigma


class LogNormal(Normal):
    """``exp(normal(mu, sigma))``."""

    type = "lognormal"


class QNormal(_SweepObject):
    """``round(normal(mu, sigma) / q) * q``."""

    type, _fields = "qnormal", ("mu", "sigma", "q")

    def __init__(self, mu: float | None = None, sigma: float | None = None, q: float | None = None):
        self.mu, self.sigma, self.q = mu, sigma, q


class QLogNormal(QNormal):
    """``round(exp(normal(mu, sigma)) / q) * q``."""

    type = "qlognormal"


class Randint(_SweepObject):
    """An integer in [0, upper)."""

    type, _fields = "randint", ("upper",)

    def __init__(self, upper: int | None = None):
        self.upper = upper


class BanditPolicy(_SweepObject):
    """Stops a trial whose primary metric trails the best by more than ``slack_factor`` (a ratio) or
    ``slack_amount`` (an absolute margin; give one of the two), checked every ``evaluation_interval`` evaluations
    (default 1) after the first ``delay_evaluation`` (default 0)."""

    type, _fields = "bandit", ("evaluation_interval", "delay_evaluation", "slack_factor", "slack_amount")

    def __init__(self, *, delay_evaluation: int | None = None, evaluation_interval: int | None = None,
                 slack_amount: float | None = None, slack_factor: float | None = None):
        self.delay_evaluation, self.evaluation_interval = delay_evaluation, evaluation_interval
        self.slack_amount, self.slack_factor = slack_amount, slack_factor


class MedianStoppingPolicy(_SweepObject):
    """Stops a trial whose best metric is below the median of the running averages of all trials."""

    type, _fields = "median_stopping", ("evaluation_interval", "delay_evaluation")

    def __init__(self, *, delay_evaluation: int | None = None, evaluation_interval: int | None = None):
        self.delay_evaluation, self.evaluation_interval = delay_evaluation, evaluation_interval


class TruncationSelectionPolicy(_SweepObject):
    """At each interval, cancels the lowest ``truncation_percentage`` % of trials (1..99)."""

    type, _fields = "truncation_selection", ("evaluation_interval", "delay_evaluation", "truncation_percentage",
                                             "exclude_finished_jobs")

    def __init__(self, *, delay_evaluation: int | None = None, evaluation_interval: int | None = None,
                 truncation_percentage: int | None = None, exclude_finished_jobs: bool | None = None):
        self.delay_evaluation, self.evaluation_interval = delay_evaluation, evaluation_interval
        self.truncation_percentage, self.exclude_finished_jobs = truncation_percentage, exclude_finished_jobs


class AshaPolicy(_SweepObject):
    """Asynchronous successive halving, counted in epochs (visionsweep's own policy, ``type: asha``; the one
    AutoMode uses): trials are compared at ``grace_period * reduction_factor**i`` epochs and the top
    ``1/reduction_factor`` go on."""

    type, _fields = "asha", ("grace_period", "reduction_factor", "max_epochs")

    def __init__(self, *, grace_period: int | None = None, reduction_factor: float | None = None,
                 max_epochs: int | None = None):
        self.grace_period, self.reduction_factor, self.max_epochs = grace_period, reduction_factor, max_epochs


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

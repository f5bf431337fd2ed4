"""Early-termination policies, registered by name (SPEC §3.5, §8.4).

``create_scheduler(spec, metric, max_epochs)`` turns a validated ``sweep.early_termination`` into a Ray
Tune trial scheduler. Names: ``bandit``, ``median_stopping``, ``truncation_selection`` (the spec's
rules, implemented exactly in this package) and ``asha`` (Ray Tune's asynchronous successive halving,
the policy AutoMode uses). Unknown names are errors, and so are duplicate registrations.
"""

from __future__ import annotations

from typing import Any, Callable

from scheduler.policies.bandit import BanditRule
from scheduler.policies.base import Decision, Policy
from scheduler.policies.percentile import MedianStoppingRule, TruncationSelectionRule
from trainers.registry import Registry

_POLICIES: Registry[Callable[..., Policy]] = Registry("policy")


def register_policy(name: str, factory: Callable[..., Policy]) -> None:
    _POLICIES.register(name, factory)


register_policy("bandit", BanditRule)
register_policy("median_stopping", MedianStoppingRule)
register_policy("truncation_selection", TruncationSelectionRule)


def list_policies() -> list[str]:
    return _POLICIES.names() + ["asha"]


def create_policy(name: str, **kwargs: Any) -> Policy:
    return _POLICIES.get(name, f"early_termination.type {name!r} is not a policy of this package")(**kwargs)


def create_scheduler(spec, metric: str, max_epochs: int, run_dir: str | None = None, epochs_of=None):
    """A Ray Tune scheduler for a validated early_termination spec (pydantic model), or None for no policy.
    ``epochs_of(config)``: the epochs a trial of that config trains (picklable; see PolicyScheduler)."""
    from scheduler.policies.ray_adapter import PolicyScheduler, RecordingASHA

    if spec is None:
        return None
    params = spec.model_dump(exclude={"type"})
    if spec.type == "asha":
        return RecordingASHA(max_epochs=params.pop("max_epochs") or max_epochs, run_dir=run_dir,
                             epochs_of=epochs_of, **params)
    return PolicyScheduler(create_policy(spec.type, **params), metric, run_dir=run_dir, epochs_of=epochs_of)


__all__ = ["BanditRule", "Decision", "MedianStoppingRule", "Policy", "TruncationSelectionRule",
           "create_policy", "create_scheduler", "list_policies", "register_policy"]

"""What a sweep searches and how: the Tune searcher, the early-termination scheduler and the number of trials
(manual sweeps: the job's space, sampler and policy; AutoMode: its plan), with the notes the user sees."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scheduler import automode
from scheduler.budget import BudgetPlan
from scheduler.policies import create_scheduler
from scheduler.policies.configs import AshaSettings
from scheduler.searchers import SpaceSearcher
from scheduler.space import Choice
from scheduler.spec import Job
from scheduler.warmstart import load_prior_trials
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError


@dataclass
class Plan:
    """What will be searched and how: Tune searcher, scheduler, number of trials, notes for the user."""

    searcher: Any
    scheduler: Any
    total_trials: int
    algorithm: str
    notes: list[str] = field(default_factory=list)
    automode: dict[str, Any] | None = None
    max_concurrent: int | None = None  # trials at a time, where AutoMode's budget chose it (else the job's limit)


def trial_fixed(job: Job) -> dict[str, Any]:
    """What every trial's sampled config is resolved against (the trainable's ``fixed``)."""
    return {**job.training_parameters, "advanced_settings": job.advanced.model_dump()}


def all_hyperparameters(task: str, fixed: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter a trial runs with (for params.json and MLflow); a sampled value the trial itself will
    refuse, with its own error, leaves what was sampled."""
    try:
        return hp.resolve_hyperparameters(task, fixed, sampled)
    except (VisionsweepError, ValueError):  # the settings' own errors (the trial reports them); nothing else
        return dict(sampled)


def trial_epochs(task: str, fixed: dict[str, Any], config: dict[str, Any]) -> int:
    return int(hp.resolve_hyperparameters(task, fixed, config)["number_of_epochs"])


def max_epochs(job: Job) -> int:
    """The most epochs any trial can run: the ASHA budget."""
    fixed = job.training_parameters
    if "number_of_epochs" in fixed:
        return fixed["number_of_epochs"]
    found = []
    for sub in job.search_space or []:
        d = sub.get("number_of_epochs")
        if isinstance(d, Choice):
            found += [int(v) for v in d.values]
    models = [m for sub in job.search_space or [] if "model_name" in sub for m in sub["model_name"].values]
    models = models or [fixed.get("model_name") or hp.DEFAULT_MODEL[job.task]]
    found += [hp.task_model_defaults(job.task, m)["number_of_epochs"] for m in models]
    return max(found)


def build_plan(job: Job, has_gpu: bool, run_dir: Path, available: Callable[..., str | None] | None = None,
               budget: BudgetPlan | None = None) -> Plan:
    """``budget``: AutoMode's trials, epochs, input sizes and concurrency fitted to the time limit
    (``scheduler.budget``); without it AutoMode plans ``max_trials`` at the default epochs and sizes."""
    from scheduler.policies.ray_adapter import PolicyScheduler  # ray

    epochs_of = functools.partial(trial_epochs, job.task, trial_fixed(job))  # a stop at the last epoch is a finish

    spec, seed, primary = job.spec, job.spec.visionsweep.seed, job.primary_metric
    limits = spec.limits
    priors = load_prior_trials(spec.visionsweep.resume_from, primary)
    notes = [f"warm start: {len(priors)} trial(s) from {len(spec.visionsweep.resume_from)} earlier run(s)"] \
        if spec.visionsweep.resume_from else []
    if job.mode == "automode":
        p = automode.plan(job.task, limits.max_trials, job.training_parameters, has_gpu, available,
                          spec.visionsweep.pretrained, budget, max_latency_ms=spec.visionsweep.max_latency_ms)
        searcher = SpaceSearcher(p["space"], "random", p["trials"], seed, primary, "max",
                                 first=[p["first_trial"]["config"]])
        scheduler = create_scheduler(AshaSettings(type="asha", **p["asha"]), primary, p["asha"]["max_epochs"],
                                     str(run_dir), epochs_of)
        notes.append("AutoMode: " + ", ".join(m["model_name"] for m in p["models"]) +
                     f" under ASHA (grace {p['asha']['grace_period']} epoch(s), factor "
                     f"{p['asha']['reduction_factor']:g}); see automode.json")
        return Plan(searcher, scheduler, searcher.total_trials, "random", notes, automode.explain(p),
                    budget.concurrency if budget is not None else None)
    algorithm = spec.sweep.sampling_algorithm if spec.sweep else "random"
    if algorithm == "bayesian":
        from scheduler.bayesian import budget_warning, make_searcher

        warning = budget_warning(job.search_space, limits.max_trials)
        notes += [f"warning: {warning}"] if warning else []
        searcher = make_searcher(job.search_space, primary, seed, limits.max_trials, priors)
        return Plan(searcher, None, limits.max_trials, algorithm, notes)
    searcher = SpaceSearcher(job.search_space, algorithm, limits.max_trials, seed, primary, "max")
    policy = spec.sweep.early_termination if spec.sweep else None
    scheduler = create_scheduler(policy, primary, max_epochs(job), str(run_dir), epochs_of)
    if priors and isinstance(scheduler, PolicyScheduler):
        for p in priors:
            scheduler.policy.add_history(f"prior:{Path(p.run).name}/{p.trial_id}", p.values)
    elif priors:
        notes.append("warm start: histories are used by bandit, median_stopping and truncation_selection only")
    return Plan(searcher, scheduler, searcher.total_trials, algorithm, notes)

"""Stage 4, plan: what the sweep searches and how (``scheduler.plan``); for AutoMode also the models it picks, the
cost probe and the budget fitted to ``limits.timeout_minutes`` (``scheduler.budget``), and the weights of the models
it picked. Writes weights.json and automode.json."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from scheduler.plan import Plan, build_plan, trial_fixed
from scheduler.preflight import check_weights, weights_available, weights_lines
from scheduler.resources import TrialResources
from scheduler.runfolder import read_json
from scheduler.stages.check import Checked
from scheduler.stages.context import RunContext
from trainers.data import PreparedData
from trainers.models.weights.sources import WeightsConfig

log = logging.getLogger(__name__)


@dataclass
class Planned:
    plan: Plan
    weights: WeightsConfig  # with the cache paths the driver saw (a trial on this machine uses them)


def plan_sweep(ctx: RunContext, checked: Checked, data: PreparedData, res: TrialResources) -> Planned:
    job, run_dir = ctx.job, ctx.run_dir
    wcfg, wplan = checked.weights, checked.weights_plan
    available = weights_available(job, wcfg)
    plan = build_plan(job, res.has_gpu, run_dir, available)
    if plan.automode is not None:  # AutoMode: measure what a trial costs, then fit the plan to the time limit
        with ctx.phase("cost_probe"):
            budget = automode_budget(ctx, plan.automode, data, wcfg, res, checked.init_package)
        plan = build_plan(job, res.has_gpu, run_dir, available, budget)
        for line in budget.messages:
            ctx.echo(line)
    if wplan is None:  # AutoMode: the weights of the models it picked
        models = plan.automode["models"]
        wcfg, wplan = check_weights(job, wcfg, [m["model_name"] for m in models],
                                    [m["settings"]["model_size"] for m in models
                                     if "model_size" in m.get("settings", {})] or None)
    (run_dir / "weights.json").write_text(json.dumps(wplan, indent=2) + "\n")
    for line in (weights_lines(wplan) if not checked.init_package
                 else [f"weights: from checkpoint_run_id {checked.init_package}"]):
        ctx.echo(line)
    for n in plan.notes:
        ctx.echo(n)
    if plan.automode is not None:
        (run_dir / "automode.json").write_text(json.dumps(plan.automode, indent=2) + "\n")
    return Planned(plan, wcfg)


def automode_budget(ctx: RunContext, p: dict[str, Any], data: PreparedData, wcfg: WeightsConfig,
                    res: TrialResources, init_package: str | None):
    """AutoMode's budget (``scheduler.budget``): the cost probe on the cluster (``scheduler.costprobe``), then the
    trials, epochs, input sizes and concurrency fitted to ``limits.timeout_minutes``. A resumed run keeps the
    budget its first start chose (Tune restores that sweep's searcher and scheduler)."""
    from scheduler import automode
    from scheduler.budget import BudgetPlan
    from scheduler.costprobe import PROBE_TIMEOUT_S, measure, native_size, trial_slots

    job, echo = ctx.job, ctx.echo
    earlier = read_json(ctx.run_dir / "automode.json", {}).get("budget") if ctx.resume else None
    if earlier:
        return BudgetPlan.from_json(earlier)
    limits, fixed = job.spec.limits, job.training_parameters
    slots = trial_slots(res)
    # a concurrency the job set is a cap; unset, AutoMode runs as many trials at once as the cluster holds
    cap = limits.max_concurrent_trials if "max_concurrent_trials" in limits.model_fields_set else slots
    native = native_size(data)
    cost, why = None, "no time left"
    left = ctx.left_s()
    if left > 0:
        echo("AutoMode budget: measuring what an epoch costs ("
             + ", ".join(dict.fromkeys(m["model_name"] for m in p["models"])) + ")")
        try:
            runs = automode.probe_runs(job.task, p, fixed, native)
            cost = measure(job.task, trial_fixed(job), runs, data, wcfg, res, init_package,
                           timeout_s=min(PROBE_TIMEOUT_S, max(60.0, left / 4)))
        except Exception as e:  # the trials report a model's own error; the plan goes on unmeasured
            cause = getattr(e, "cause", None) or e
            why = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            log.warning("AutoMode cost probe failed", exc_info=True)
    spent = ctx.elapsed_s()
    return automode.fit_budget(job.task, p, fixed, cost, train_images=len(data.train), valid_images=len(data.valid),
                               concurrency=max(1, min(cap, slots)), left_s=limits.timeout_minutes * 60 - spent,
                               spent_s=spent, limit_given="timeout_minutes" in limits.model_fields_set,
                               native=native, why_unmeasured=why)

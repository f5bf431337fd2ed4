"""Stage 6, finish: the leaderboard, the best model, MLflow's parent run, the report and summary.json
(``scheduler.finish``, from the run folder's files alone); AutoMode's actual minutes beside its plan; a cancelled
sweep ends here with :class:`~scheduler.stops.Cancelled`, its message naming what is kept and the resume command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster.connect import release_embedded
from scheduler.finish import RunResult, finish_run
from scheduler.runfolder import CANCELLED, read_trials
from scheduler.stages.context import RunContext
from scheduler.stages.planning import Planned
from scheduler.stages.trials import Outcome
from scheduler.stops import Cancelled
from trainers.data import PreparedData


def finish_sweep(ctx: RunContext, planned: Planned, outcome: Outcome, data: PreparedData) -> RunResult:
    plan, cancelled = planned.plan, outcome.cancelled
    if ctx.release_ray and release_embedded():  # nothing after the trials needs Ray
        ctx.stops.arm()  # Ray's shutdown reset SIGTERM under the handler
    result = finish_run(ctx.job, ctx.store, ctx.t0, outcome.timed_out, outcome.tracker, plan.notes, ctx.phase,
                        data.store, cancelled)
    if plan.automode is not None:
        automode_actual(ctx.run_dir, plan.automode, ctx.elapsed_s(), outcome.timed_out)
    if cancelled:
        raise Cancelled(cancelled.signum, cancel_message(ctx.run_dir, cancelled, ctx.store.where))
    return result


def automode_actual(run_dir: Path, p: dict[str, Any], elapsed_s: float, timed_out: bool) -> None:
    """The end of an AutoMode run: what it took and how many trials started and finished, beside the plan."""
    trials = read_trials(run_dir).values()
    minutes = elapsed_s / 60
    stopped = [t for t in trials if t.status.startswith("stopped (") and t.status != "stopped (timeout)"]
    limit = (p.get("budget") or {}).get("limit_minutes")
    p = {**p, "actual": {
        "minutes": round(minutes, 2),
        "trials_started": sum(t.status != "pending" for t in trials),
        "trials_finished": sum(t.status == "completed" for t in trials) + len(stopped),
        "trials_completed": sum(t.status == "completed" for t in trials),
        "trials_stopped_early": len(stopped),
        "trials_stopped_by_timeout": sum(t.status == "stopped (timeout)" for t in trials),
        "trials_failed": sum(t.status == "error" for t in trials),
        "timed_out": timed_out,
        "within_limit": None if limit is None else minutes <= limit,
    }}
    (run_dir / "automode.json").write_text(json.dumps(p, indent=2) + "\n")


def cancel_message(run_dir: Path, cancelled: Cancelled, where: str) -> str:
    """The last words of a cancelled ``run``/``resume``: what is kept, and the command that goes on."""
    trials = read_trials(run_dir).values()
    done = sum(t.finished for t in trials)
    going = sum(t.status == CANCELLED for t in trials)
    return (f"cancelled by {cancelled.signal_name}: {done} finished trial(s) kept, {going} interrupted (each goes "
            f"on from its last checkpoint); `visionsweep resume {where}` goes on")

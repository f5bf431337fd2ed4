"""Finishing a sweep, from the run folder's files alone (so a resumed or crashed sweep finishes the same way): the
leaderboard, the best trial's best checkpoint as ``best/``, MLflow's parent run, the report and ``summary.json``."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import deployment
from scheduler.leaderboard import leaderboard_rows, write_leaderboard
from scheduler.runfolder import CANCELLED, read_json, read_trials
from scheduler.runstore import RunStore, best_checkpoint
from scheduler.spec import Job
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError

SERVICE_MODEL = "outputs/mlflow-model"  # where the service keeps a trial's MLflow model (§9.1)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path  # on this machine (the staging copy of a run folder on storage)
    rows: list[dict[str, Any]]
    best_trial: str | None
    best_metric: float | None
    elapsed_s: float
    timed_out: bool
    notes: list[str] = field(default_factory=list)
    location: str = ""  # the run folder as the user named it: a local path or a storage URL


class Phases(dict):
    """Seconds spent in each phase of the job (summary.json ``timings_s``): where a job's time goes."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - t, 2)


def finish_run(job: Job, store: RunStore, t0: float, timed_out: bool, tracker=None,
               notes: list[str] | None = None, phase: Phases | None = None, images=None,
               cancelled=None) -> RunResult:
    """Leaderboard, best model package, report, tracking and summary, all from the run folder's files (``images``:
    how the job reads its images, for the best model's predictions on validation images).

    ``cancelled`` (a :class:`scheduler.stops.Cancelled`): the sweep was stopped by a signal. ``summary.json`` says
    so (``state``), the best model comes from finished trials only (an interrupted trial's checkpoint waits for the
    resume that continues it), MLflow's runs end KILLED, and no predictions are drawn (``ray job stop`` gives a
    few seconds before SIGKILL)."""
    primary, ext = job.primary_metric, job.spec.visionsweep
    run_dir = store.local
    phase = phase if phase is not None else Phases()
    default_model = job.training_parameters.get("model_name") or hp.DEFAULT_MODEL[job.task]
    with phase("export"):
        rows = leaderboard_rows(read_trials(run_dir), primary, default_model)
        write_leaderboard(run_dir / "leaderboard.csv", rows)
        finished = [r for r in rows if r["status"] != CANCELLED]  # never promoted: a resume goes on with them
    figures, over, stopped_figures = None, set(), None
    if not cancelled and deployment.enabled(ext.deploy_top_k, ext.max_latency_ms):
        with phase("deployment"):
            try:  # the forms' figures are a view of the result, like the report: never fail a finished sweep
                budget = None if ext.deploy_time_share is None else ext.deploy_time_share * (time.time() - t0)
                figures = deployment.measure_trials(store, finished, primary, job.task, top_k=ext.deploy_top_k,
                                                    max_latency_ms=ext.max_latency_ms, latency_form=ext.latency_form,
                                                    images=images, budget_s=budget)
            except Exception as e:  # noqa: BLE001
                log.warning("deployment figures (RUN/%s) not measured: %s", deployment.FILE, e)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM after the trials: finish the sweep without them
                stopped_figures = e
        if figures:
            over = deployment.mark_rows(rows, figures)
            write_leaderboard(run_dir / "leaderboard.csv", rows)
    with phase("export"):
        eligible = [r for r in finished if r["trial_id"] not in over]
        best_trial, best_metric = (copy_best_package(store, eligible, primary)
                                   if eligible and (not cancelled or any(r.get(primary) is not None for r in eligible))
                                   else (None, None))
    if figures:
        deployment.write(store, figures, best_trial)
    summary: dict[str, Any] = {
        "state": CANCELLED if cancelled else "finished",
        **({"cancelled_by": cancelled.signal_name} if cancelled else {}),
        "mode": job.mode, "task": job.task, "primary_metric": primary, "trials": len(rows),
        "best_trial": best_trial, "best_metric": best_metric, "elapsed_s": round(time.time() - t0, 1),
        "timed_out": timed_out, "best_package": f"{store.where}/best" if best_trial else None,
        "stopped_early": sum(r["status"].startswith("stopped (") and r["status"] != "stopped (timeout)"
                             for r in rows),
        "trial_epochs": sum(int(r["epochs_run"] or 0) for r in rows),
        **({"over_max_latency": sorted(over)} if over else {}),
        **({"deployment": deployment.FILE} if figures else {}),
    }
    weights_plan = read_json(run_dir / "weights.json", {})
    summary["pretrained"] = weights_plan.get("pretrained", ext.pretrained)
    summary["initial_weights"] = ({"checkpoint_run_id": weights_plan["checkpoint_run_id"]}
                                  if weights_plan.get("checkpoint_run_id") else
                                  {name: f"{m['source']}: {m['where']}" for name, m in
                                   weights_plan.get("models", {}).items()} if summary["pretrained"] else "none")
    if tracker is not None:
        with phase("tracking"):
            try:
                summary["tracking"] = tracker.finish(best_trial, best_metric, run_dir / "best" if best_trial else None,
                                                     None if cancelled else ext.tracking.register_model,
                                                     status="KILLED" if cancelled else "FINISHED",
                                                     unfinished=[r["trial_id"] for r in rows
                                                                 if r["status"] == CANCELLED])
            except Exception as e:  # tracking must never lose a finished sweep
                log.warning("MLflow tracking could not be finished: %s", e)
                summary["tracking"] = {"error": str(e)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")  # the report reads it
    if best_trial and not cancelled:
        from scheduler.predictions import predict_after_sweep

        with phase("predictions"):
            predict_after_sweep(run_dir, images)  # RUN/predictions/ for the report; logs, never raises
    with phase("report"):
        from scheduler.report import write_report  # plotly: imported when the report is written, not at start

        try:
            write_report(run_dir)
        except Exception as e:  # the report is a view; never fail the run for it
            log.warning("report not written: %s", e)
    summary["timings_s"] = {**phase, "total": round(time.time() - t0, 2)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if stopped_figures is not None:  # the sweep is whole; only the figures are missing, and nothing is to resume
        from scheduler.stops import Cancelled

        signum = getattr(stopped_figures, "signum", 2)
        raise Cancelled(signum, f"cancelled by {signal.Signals(signum).name} while the deployment figures were "
                                f"measured: the sweep is finished ({store.where}/best, report.html, summary.json); "
                                f"no {deployment.FILE}")
    return RunResult(run_dir, rows, best_trial, best_metric, time.time() - t0, timed_out, notes or [], store.where)


def copy_best_package(store: RunStore, rows: list[dict[str, Any]], primary: str) -> tuple[str | None, float | None]:
    """Copy the best trial's best checkpoint (a model package) to ``<run>/best``."""
    from trainers.package import copy_package, write_service_layout  # torchvision, timm: after the trials only

    run_dir = store.local
    best_dir = run_dir / "best"
    for row in rows:  # best first: the first trial with a checkpoint wins
        if row.get(primary) is None:
            continue
        ck = best_checkpoint(store, row["trial_id"], primary)
        if ck is None:
            continue
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            store.download(ck, Path(tmp) / "ckpt")
            copy_package(Path(tmp) / "ckpt", Path(tmp) / "best")
            if best_dir.exists():
                shutil.rmtree(best_dir)
            shutil.move(str(Path(tmp) / "best"), best_dir)
        # the managed service's layout of the same model (§9.1): outputs/mlflow-model/ with artifacts/settings.json
        meta = read_json(best_dir / "model.json", {})
        write_service_layout(best_dir, run_dir / SERVICE_MODEL, meta.get("model_name", ""))
        return row["trial_id"], row[primary]
    if not any(r.get(primary) is not None for r in rows):
        raise VisionsweepError(f"no trial reported {primary}; see {run_dir}/trials/*/status.json")
    return None, None

"""``MLClient.jobs``: submit a job, follow it, read its state: the service SDK's job operations over Ray.

With ``RAY_ADDRESS`` set to a cluster's Jobs API (``http://head:8265``, as for ``ray job submit``), a job is a Ray
job: its folder (``job.yml``) is the job's working directory and its entrypoint ``visionsweep run job.yml``; the
submission id is the job's name, so ``ray job status NAME`` / ``ray job logs NAME`` see it too. Without it, the job
runs on this machine in a process of its own (an embedded local Ray), detached from the notebook's kernel.

A job's folder, ``$VISIONSWEEP_HOME/jobs/NAME/`` (default ``~/.visionsweep``), holds ``job.yml`` (local data paths
made absolute), ``submission.json`` (where it runs, its run folder) and, for a local job, ``output.log`` and ``rc``.
Any client on this machine can ``get`` or ``stream`` it by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.home import visionsweep_home
from trainers.processes import pid_alive
from visionsweep.automl import ImageJob, load_job
from visionsweep.results import Result

POLL_S = 0.5  # how often a local job's output file is read while streaming it
TERMINAL = ("Completed", "Failed", "Canceled")
_RAY_STATUS = {"PENDING": "Starting", "RUNNING": "Running", "SUCCEEDED": "Completed", "FAILED": "Failed",
               "STOPPED": "Canceled"}


def jobs_home() -> Path:
    return visionsweep_home() / "jobs"


@dataclass
class SubmittedJob:
    """A submitted job, as ``create_or_update`` and ``get`` return it (the SDK's returned job).

    Attributes:
        name: the job's name (its Ray submission id when submitted to a cluster).
        status: ``Starting``, ``Running``, ``Completed``, ``Failed`` or ``Canceled``.
        run_folder: where its run folder is written (``report.html``, ``best/``, ``leaderboard.csv`` ...).
        studio_url: its report (the page the service's studio link would open).
        job: the job as submitted (``visionsweep.automl``).
        result: once it has ended with a summary: best trial, its parameters, leaderboard, package.
    """

    name: str
    status: str
    run_folder: str
    studio_url: str
    job: ImageJob | None = None
    result: Result | None = None
    where: str = "local"

    @property
    def best_trial(self) -> str | None:
        return self.result.best_trial if self.result else None

    @property
    def mlflow_tracking_uri(self) -> str | None:
        """The MLflow store of the run (the notebook's ``ml_client.workspaces.get(...).mlflow_tracking_uri``),
        once it has ended."""
        return ((self.result.summary.get("tracking") or {}).get("uri")) if self.result else None

    @property
    def mlflow_run_id(self) -> str | None:
        """The sweep's parent run in that store (the service's parent run id is the job's name); its tag
        ``automl_best_child_run_id`` names the best trial's run, as the service's does."""
        return ((self.result.summary.get("tracking") or {}).get("parent_run_id")) if self.result else None

    def __repr__(self) -> str:
        return (f"SubmittedJob(name={self.name!r}, status={self.status!r}, run_folder={self.run_folder!r}"
                + (f", best_trial={self.best_trial!r}" if self.best_trial else "") + ")")


class JobOperations:
    """``ml_client.jobs``."""

    def __init__(self, address: str | None = None):
        self._address = address

    # -- submit ---------------------------------------------------------------------------------------------
    def create_or_update(self, job: ImageJob, *, experiment_name: str | None = None, output: str | None = None,
                         **kwargs: Any) -> SubmittedJob:
        """Submit a job and return at once (``stream`` follows it, ``get`` reads its state).

        Args:
            job: the job (``visionsweep.automl``); its ``name`` is the job's name, or one is made up.
            experiment_name: overrides the job's experiment name (the MLflow experiment of the run).
            output: the run folder (a path or a storage URL; on a remote cluster, a storage URL or a folder the
                nodes share). Default: ``$VISIONSWEEP_HOME/jobs/NAME/run``.
        """
        if kwargs:
            raise TypeError(f"jobs.create_or_update: unknown argument(s) {', '.join(sorted(kwargs))}; expected job, "
                            "experiment_name, output")
        if not isinstance(job, ImageJob):
            raise TypeError(f"jobs.create_or_update: expected a job from visionsweep.automl, but got {job!r}")
        data = job._to_yaml()
        if experiment_name:
            data["experiment_name"] = experiment_name
        name = data.get("name") or _new_name(data)
        data["name"] = name
        for key in ("training_data", "validation_data"):  # the job file moves: its local data paths may not
            d = data.get(key)
            if d and not is_url(d["path"]) and not d["path"].startswith(("azureml:", "file://")):
                d["path"] = str((job._base_dir / d["path"]).resolve())
        from scheduler.spec import check_data_paths

        check_data_paths(job.validated())  # as `visionsweep validate`: a missing local data path fails here, not later
        folder = jobs_home() / name
        if folder.exists():
            raise VisionsweepError(f"a job named {name!r} exists already ({folder}); give the job another name")
        folder.mkdir(parents=True, mode=0o700)  # the job file may hold storage credentials: for this user only
        submitted = type(job)(base_dir=folder, _validate=False)
        submitted._data.update(data)
        (folder / "job.yml").touch(mode=0o600)
        submitted.dump(folder / "job.yml")  # validates it again, as moved
        run_folder = output or str(folder / "run")
        info = {"name": name, "run_folder": run_folder,
                "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self._address:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(self._address)
            client.submit_job(entrypoint=f"visionsweep run job.yml --output {shlex.quote(run_folder)}",
                              submission_id=name, runtime_env={"working_dir": str(folder), "excludes": ["run"],
                                                               "env_vars": STOP_ENV})
            info.update(where="ray", address=self._address)
        else:
            with open(folder / "output.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "visionsweep.cli.jobproc", str(folder), run_folder],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, cwd=str(folder))
            info.update(where="local", pid=proc.pid)
        (folder / "submission.json").write_text(json.dumps(info, indent=2) + "\n")
        return self.get(name)

    # -- read -----------------------------------------------------------------------------------------------
    def get(self, name: str) -> SubmittedJob:
        """The job's state now: status, run folder and, once it has ended, its result."""
        folder, info = _info(name)
        status = self._status(folder, info)
        result = None
        if status in TERMINAL:
            try:
                result = Result.load(info["run_folder"])
            except (OSError, KeyError, ValueError):
                result = None  # failed before its summary was written
        return SubmittedJob(name=name, status=status, run_folder=info["run_folder"],
                            studio_url=f"{info['run_folder']}/report.html", job=load_job(folder / "job.yml"),
                            result=result, where=info["where"])

    def list(self) -> list[SubmittedJob]:
        """Every job submitted from this machine, newest first."""
        home = jobs_home()
        names = [p.name for p in home.iterdir() if (p / "submission.json").is_file()] if home.is_dir() else []
        return [self.get(n) for n in sorted(names, key=lambda n: _info(n)[1]["submitted"], reverse=True)]

    def stream(self, name: str, file: TextIO | None = None) -> None:
        """Print the job's output (the sweep's progress lines) until it ends, then a summary; raises
        :class:`VisionsweepError` if it failed or was cancelled."""
        out = file or sys.stdout
        folder, info = _info(name)
        print(f"RunId: {name}\nWeb View: {info['run_folder']}/report.html\n", file=out, flush=True)
        if info["where"] == "ray":
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(info["address"])

            async def tail() -> None:
                async for lines in client.tail_job_logs(name):
                    print(lines, end="", file=out, flush=True)
            asyncio.run(tail())
        else:
            with open(folder / "output.log", "rb") as log:
                while True:
                    done = self._status(folder, info) in TERMINAL
                    chunk = log.read()
                    if chunk:
                        out.write(chunk.decode(errors="replace"))
                        out.flush()
                    if done:
                        break
                    time.sleep(POLL_S)
        job = self.get(name)
        print(f"\nExecution Summary\n=================\nRunId: {name}\nStatus: {job.status}", file=out)
        if job.result and job.result.best_trial:
            r = job.result
            print(f"Best trial: {r.best_trial} ({r.primary_metric} {r.best_metric:.4f}); model package: {r.package}",
                  file=out)
        out.flush()
        if job.status != "Completed":
            where = f"`ray job logs {name}`" if info["where"] == "ray" else str(folder / "output.log")
            raise VisionsweepError(f"job {name} {job.status.lower()}; its output: {where}")

    def begin_cancel(self, name: str) -> None:
        """Cancel the job as Ctrl-C would: finished trials, metrics and checkpoints stay in its run folder
        (``visionsweep resume RUN`` goes on)."""
        folder, info = _info(name)
        if info["where"] == "ray":
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(info["address"]).stop_job(name)
        elif self._status(folder, info) not in TERMINAL:
            os.killpg(info["pid"], signal.SIGINT)

    cancel = begin_cancel

    @staticmethod
    def _status(folder: Path, info: dict[str, Any]) -> str:
        if info["where"] == "ray":
            from ray.job_submission import JobSubmissionClient

            status = JobSubmissionClient(info["address"]).get_job_status(info["name"])
            return _RAY_STATUS.get(str(getattr(status, "value", status)), "Running")
        rc_file = folder / "rc"
        if rc_file.exists() and rc_file.read_text().strip():
            rc = int(rc_file.read_text())
            return "Completed" if rc == 0 else "Canceled" if rc in (130, 143) else "Failed"  # SIGINT, SIGTERM
        return "Running" if _alive(info["pid"]) else "Failed"  # killed before it could write its status


# `ray job stop` (begin_cancel) sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s, read
# by the job's supervisor from the job's own environment): a cancelled sweep needs longer than that to save Tune's
# state, mark its trials and end its MLflow runs (scheduler.stops). A job submitted by hand can set the same.
STOP_ENV = {"RAY_JOB_STOP_WAIT_TIME_S": "60"}


def _alive(pid: int) -> bool:
    try:  # a child of this process that ended stays a zombie (alive to a signal) until waited for
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not this process's child: another client started it
    return pid_alive(pid)


def _info(name: str) -> tuple[Path, dict[str, Any]]:
    folder = jobs_home() / name
    try:
        return folder, json.loads((folder / "submission.json").read_text())
    except (OSError, ValueError):
        raise VisionsweepError(f"no job named {name!r} was submitted from this machine (looked in {folder})") from None


def _new_name(data: dict[str, Any]) -> str:
    stem = str(data.get("experiment_name") or data["task"]).replace("_", "-").lower()
    return f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

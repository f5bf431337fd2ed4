"""``visionsweep.run(job)``: the short path for Ray users: build a job in Python, run it here, get a result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from visionsweep.automl import ImageJob
from visionsweep.results import Result


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quiet(line: str) -> None:
    pass


def run(job: ImageJob | str | Path, output: str | Path | None = None,
        echo: Callable[[str], None] | None = _stderr) -> Result:
    """Run a job on the connected Ray cluster (``RAY_ADDRESS``, an already started ``ray.init()``, or else an
    embedded local Ray) and wait for it; returns its :class:`~visionsweep.results.Result`.

    Args:
        job: a job object (``visionsweep.automl``) or the path of a CLI job file.
        output: the run folder, a local path or a storage URL (default: ``runs/<experiment or task>-<time>``).
        echo: where the sweep's progress lines go, credentials shown as ``***`` (default: stderr; None: nowhere).
    """
    from scheduler.controller import run_job
    from scheduler.joblog import REDACTION, apply_job_logging, process_defaults
    from scheduler.spec import load_job

    process_defaults()
    spec = load_job(job) if isinstance(job, (str, Path)) else job.validated()
    apply_job_logging(spec)  # the job's credentials join REDACTION
    out = echo or _quiet
    result = run_job(spec, output, echo=lambda line: out(REDACTION.redact(line)))
    return Result.from_folder(result.run_dir, result.location or str(result.run_dir), rows=result.rows)


def check_data(job: ImageJob | str | Path, deep: bool = False,
               echo: Callable[[str], None] | None = _stderr) -> dict:
    """Check a job's data as ``visionsweep check-data`` does (duplicates, training/validation leaks, balance, boxes;
    ``deep``: likely wrong labels too) on the connected Ray cluster, without a sweep; returns the findings (the
    document ``check-data --json`` prints: ``duplicates``, ``leakage``, ``label_issues``, ``balance``, ``boxes``)."""
    from scheduler.data_check.job import check_job_data
    from scheduler.joblog import REDACTION, apply_job_logging, process_defaults
    from scheduler.spec import load_job

    process_defaults()
    spec = load_job(job) if isinstance(job, (str, Path)) else job.validated()
    apply_job_logging(spec)
    out = echo or _quiet
    return check_job_data(spec, "deep" if deep else "standard", echo=lambda line: out(REDACTION.redact(line)),
                          release_ray=False)

"""What every stage of a run shares: the job, its run folder, where progress lines go, and the job's clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scheduler.finish import Phases
from scheduler.runstore import RunStore
from scheduler.spec import Job
from scheduler.stops import StopSignals

clock = time.time  # the job's clock for limits.timeout_minutes (a test moves it past data preparation)


@dataclass
class RunContext:
    job: Job
    store: RunStore
    echo: Callable[[str], None]
    resume: bool
    t0: float  # when the job started: limits.timeout_minutes covers checks, data, the cluster's start and trials
    stops: StopSignals
    phase: Phases = field(default_factory=Phases)  # seconds per stage, for summary.json's timings_s
    release_ray: bool = False  # an embedded Ray is shut down once the trials are over (a command's run)

    @property
    def run_dir(self) -> Path:
        return self.store.local

    def elapsed_s(self) -> float:
        return clock() - self.t0

    def left_s(self) -> float:
        """What is left of ``limits.timeout_minutes``."""
        return self.job.spec.limits.timeout_minutes * 60 - self.elapsed_s()

"""Stage 3b, data check: the job's prepared data checked on the cluster before the first trial
(``scheduler.data_check``): one console line and ``RUN/data_check.json``. A resumed run keeps the check it had."""

from __future__ import annotations

import logging
import os

from scheduler import data_check
from scheduler.preflight import weights_config
from scheduler.stages.context import RunContext
from trainers.data import PreparedData
from trainers.errors import VisionsweepError

log = logging.getLogger(__name__)


LEVEL_ENV = "VISIONSWEEP_DATA_CHECK"  # a level that overrides the job's (the test suite sets off)


def check_prepared_data(ctx: RunContext, data: PreparedData) -> None:
    level = os.environ.get(LEVEL_ENV, "").strip().lower() or ctx.job.spec.visionsweep.data_check
    if level not in data_check.LEVELS:
        raise VisionsweepError(f"${LEVEL_ENV}: expected one of {', '.join(data_check.LEVELS)}, but got {level!r}")
    if level == "off" or ctx.resume and (ctx.run_dir / data_check.FILE).is_file():
        return
    with ctx.phase("data_check"):
        try:  # a view of the data, like the report: it never stops a job whose data passed the parser
            findings = data_check.check_data(data.task, data.train, data.valid, data.classes, data.store, level,
                                             ctx.job.training_parameters.get("tile_grid_size"), echo=ctx.echo,
                                             weights_cfg=weights_config(ctx.job))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001
            log.warning("the data check did not finish (%s: %s); the job goes on without it", type(e).__name__, e)
            return
        data_check.write(ctx.run_dir, findings)
    ctx.store.push()
    ctx.echo(data_check.summary_line(findings) + f"; details: {ctx.store.where}/{data_check.FILE}")

"""Stage 3, connect: Ray (the cluster named by RAY_ADDRESS, or an embedded local one) and what one trial asks of it;
an embedded Ray that cannot hold one trial is refused here (it never grows: the trials would wait forever)."""

from __future__ import annotations

import os

from cluster.connect import connect, gpus_per_node
from scheduler import deployment
from scheduler.resources import TrialResources, capacity_shortfall, local_gpus, trial_resources, workers_per_trial
from scheduler.stages.context import RunContext
from trainers.errors import VisionsweepError


def connect_cluster(ctx: RunContext) -> TrialResources:
    job = ctx.job
    ext = job.spec.visionsweep
    if deployment.enabled(ext.deploy_top_k, ext.max_latency_ms):
        deployment.warm_imports()  # the figures after the sweep need torch; imported on idle CPU meanwhile
    # Data-parallel trials need the dashboard: Ray Train frees a stopped trial's workers through it. (It matters
    # for an embedded Ray only, whose GPUs are this machine's; a cluster has its dashboard already.)
    with ctx.phase("ray_start"):
        ctx.echo(f"ray: {connect(dashboard=workers_per_trial(job, local_gpus()) > 1)}")
    ctx.stops.arm()  # ray.init installed its own SIGTERM handler
    res = trial_resources(job, gpus_per_node(), ctx.store)
    short = capacity_shortfall(res.group)
    if short and not os.environ.get("RAY_ADDRESS"):
        raise VisionsweepError(short.split(" now:")[0] + "; " + short.rsplit(" (", 1)[-1].rstrip(")"))
    if short:
        ctx.echo(f"warning: {short}")
    return res

"""Stage 3, connect: Ray (the cluster named by RAY_ADDRESS, or an embedded local one) and what one trial asks of it;
an embedded Ray that cannot hold one trial is refused here (it never grows: the trials would wait forever)."""

from __future__ import annotations

import os

from cluster import capacity
from cluster.connect import autoscaler_node_types, connect, gpus_per_node
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
    _spot_capacity(ctx, res)
    short = capacity_shortfall(res.group)
    if short and not os.environ.get("RAY_ADDRESS"):
        raise VisionsweepError(short.split(" now:")[0] + "; " + short.rsplit(" (", 1)[-1].rstrip(")"))
    if short:
        ctx.echo(f"warning: {short}")
    return res


def _spot_capacity(ctx: RunContext, res: TrialResources) -> None:
    """Where the cluster has spot capacity (``cluster.capacity``): the controller must not keep its run folder on a
    spot node, and the data-parallel trials' drivers need an on-demand node to go on. Says which nodes are spot."""
    import ray

    problem = capacity.controller_problem(ray.get_runtime_context().get_node_labels(), ctx.store.remote is not None,
                                          ctx.store.where)
    if problem and problem[0] == "error":
        raise VisionsweepError(problem[1])
    if problem:
        ctx.echo(f"warning: {problem[1]}")
    types, nodes = autoscaler_node_types(), ray.nodes()
    spot_types, spot_nodes = capacity.spot_node_types(types), capacity.spot_nodes(nodes)
    if not spot_types and not spot_nodes:
        return
    kinds = ", ".join([*(f"node type {t}" for t in spot_types), *([f"{len(spot_nodes)} running node(s)"]
                                                                   if spot_nodes else [])])
    drivers = ""
    if res.group.workers > 1:
        drivers = "; data-parallel trial drivers are kept on on-demand nodes"
        if not capacity.driver_places(nodes, types, res.cpus):
            ctx.echo(f"warning: a data-parallel trial's driver needs {res.cpus:g} CPU on a node that is not spot "
                     f"({capacity.MARKET_LABEL}), and the cluster has and can launch none: trials wait until one "
                     "joins (give the head CPUs, or add an on-demand node type)")
    ctx.echo(f"spot capacity: {kinds} ({capacity.MARKET_LABEL}={capacity.SPOT}): a node told to leave checkpoints "
             f"its trials at the next step{drivers}")

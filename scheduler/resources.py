"""How much of the cluster a trial takes (SPEC §3.6, §3.8, §11.1), decided once per job: how many data-parallel
workers (nodes x workers per node), what each reserves, and what the Tune trial itself reserves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler.runstore import TRAIN, RunStore
from scheduler.spec import Job
from trainers.launch import Group

DRIVER_CPUS = 0.1  # what the driver of a data-parallel trial reserves: it only waits on its workers


def workers_per_trial(job: Job, gpus_per_node: float) -> int:
    """Workers per trial: nodes x workers per node. ``distributed`` unset or true: a trial takes every GPU of its
    node; false: one GPU. On a CPU-only cluster a node gives one worker unless ``visionsweep.workers_per_node``
    says otherwise. The one formula: the dashboard decision before Ray starts and the group after both use it."""
    ext, tp = job.spec.visionsweep, job.training_parameters
    if ext.workers_per_node is not None:
        per_node = ext.workers_per_node
    elif gpus_per_node >= 1 and tp.get("distributed") is not False:
        per_node = int(gpus_per_node)
    else:
        per_node = 1
    return job.spec.properties.node_count_per_trial * per_node


def plan_group(job: Job, gpus_per_node: float, store: RunStore) -> Group:
    """The trial's worker group (one worker runs in-process)."""
    ext = job.spec.visionsweep
    nodes = job.spec.properties.node_count_per_trial
    workers = workers_per_trial(job, gpus_per_node)
    return Group(workers=workers, use_gpu=gpus_per_node > 0,
                 cpus_per_worker=ext.cpus_per_trial, spread=nodes > 1 and workers == nodes,
                 max_failures=ext.trial_retries,
                 amp=ext.mixed_precision, channels_last=ext.channels_last, sync_batchnorm=ext.sync_batchnorm,
                 **dict(zip(("storage_path", "storage_filesystem"), store.ray_storage(TRAIN))))


@dataclass(frozen=True)
class TrialResources:
    """A trial's worker group and what the Tune trial reserves for itself."""

    group: Group
    cpus: float
    gpus: float
    has_gpu: bool

    def placement(self) -> Any:
        """What the Tune trial reserves (``tune.with_resources``). A data-parallel trial's driver (and Ray Train's
        controller, which Ray places beside it) only waits on its workers, and is what a lost node would take the
        trial's bookkeeping with: it goes on a node that is not spot (``cluster.capacity``); a one-worker trial
        trains itself and goes where its GPU is, spot or not."""
        if self.group.workers > 1:
            from ray import tune

            from cluster.capacity import OFF_SPOT

            return tune.PlacementGroupFactory([{"CPU": self.cpus}], bundle_label_selector=[OFF_SPOT])
        return {"cpu": self.cpus, "gpu": self.gpus}

    def describe(self) -> str:
        g = self.group
        if g.workers > 1:
            return (f"{g.workers} data-parallel workers x ({g.cpus_per_worker:g} CPU + {int(self.has_gpu)} GPU) "
                    "per trial")
        return f"{g.cpus_per_worker:g} CPU + {self.gpus:g} GPU per trial"


def trial_resources(job: Job, gpus_per_node: float, store: RunStore) -> TrialResources:
    ext = job.spec.visionsweep
    group = plan_group(job, gpus_per_node, store)
    has_gpu = gpus_per_node > 0
    if group.workers > 1:  # the trial is only the group's driver; the workers reserve their own CPUs / GPUs
        return TrialResources(group, DRIVER_CPUS, 0.0, has_gpu)
    gpus = ext.gpus_per_trial if ext.gpus_per_trial is not None else (1.0 if has_gpu else 0.0)
    return TrialResources(group, ext.cpus_per_trial, gpus, has_gpu)


def capacity_shortfall(group: Group) -> str | None:
    """Why a data-parallel trial's workers cannot all be placed on the cluster as it is now, or None.

    A warning, not an error: an autoscaling cluster may still add the nodes; otherwise the trial waits.
    """
    import ray

    if group.workers <= 1:
        return None
    res = ray.cluster_resources()
    need_cpu = group.workers * group.cpus_per_worker + DRIVER_CPUS
    if need_cpu > res.get("CPU", 0) + 1e-9:
        return (f"a data-parallel trial needs {group.workers} workers x {group.cpus_per_worker:g} CPU "
                f"(visionsweep.cpus_per_trial) + {DRIVER_CPUS:g} CPU for its driver = {need_cpu:g} CPUs, but the "
                f"cluster has {res.get('CPU', 0):g} now: trials wait until nodes are added (lower cpus_per_trial, "
                "workers_per_node or node_count_per_trial to fit)")
    if group.use_gpu and group.workers > res.get("GPU", 0):
        return (f"a data-parallel trial needs {group.workers} GPUs (one per worker), but the cluster has "
                f"{res.get('GPU', 0):g} now: trials wait until GPU nodes are added")
    return None


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()

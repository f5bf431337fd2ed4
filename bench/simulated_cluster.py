"""Where a sweep's data-parallel trials land on a large GPU cluster, simulated with Ray's own test cluster (issue 18).

``ray.cluster_utils.Cluster`` starts a real GCS and one real raylet per node on this machine; each worker node
declares ``--gpus-per-node`` GPUs (Ray schedules declared GPUs; none need exist) and the head none. The job's
placement comes from the real code: the job YAML is parsed, ``scheduler.resources.trial_resources`` decides the
trial's worker group, and ``Group.scaling_config()`` is the ScalingConfig the trial hands to Ray Train. Ray Train
reserves a group as one placement group of a bundle per worker with that strategy
(``ray.train.v2 ... worker_group._create_placement_group``); the script reserves exactly that, plus the Tune
trial's own bundle, for ``--concurrent`` trials and one more, without starting the training processes (dozens of
torch processes per trial do not fit a laptop; the placement, scheduling and demand are Ray's own).

Reported (and checked):
* each trial's workers: on how many nodes, how many per node, none on the head;
* the concurrent trials fill the cluster (every GPU reserved);
* the trial that does not fit waits, and the demand GCS gives the autoscaler for it (pending gang requests) is
  one bundle per worker, {CPU, GPU: 1} each, with the group's strategy: what a real cluster would be asked for.

    .venv/bin/python bench/simulated_cluster.py [--nodes 16] [--gpus-per-node 8] [--node-count-per-trial 4]
                                                [--concurrent 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOB = """\
task: image_classification
target_column_name: label
training_data: {{path: ./unused}}
properties: {{node_count_per_trial: "{nodes}"}}
limits: {{max_trials: {trials}, max_concurrent_trials: {concurrent}}}
training_parameters: {{model_name: resnet50, distributed: true}}
"""


def pending_demand(address: str) -> list[dict]:
    """The gang (placement group) requests GCS reports to the autoscaler as not yet placed."""
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    state = get_cluster_resource_state(GcsClient(address=address))
    out = []
    for gang in state.pending_gang_resource_requests:
        bundles = [dict(r.resources_bundle) for r in gang.requests]
        strategies = sorted({c.WhichOneof("constraint_type") for r in gang.requests for c in r.placement_constraints})
        out.append({"bundles": len(bundles), "bundle": bundles[0] if bundles else {}, "constraints": strategies,
                    "details": gang.details})
    return out


def simulate(nodes: int, gpus_per_node: int, node_count: int, concurrent: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group, placement_group_table

    from scheduler.resources import trial_resources
    from scheduler.runstore import RunStore
    from scheduler.spec import parse_job

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=2 * gpus_per_node, num_gpus=gpus_per_node)
        ray.init(address=cluster.address, logging_level="ERROR")
        cluster.wait_for_nodes()
        started = time.perf_counter() - t0
        head = ray.get_runtime_context().get_node_id()  # this driver is on the head, as a submitted job's is

        job = parse_job(JOB.format(nodes=node_count, trials=concurrent + 1, concurrent=concurrent))
        with tempfile.TemporaryDirectory() as d:
            res = trial_resources(job, gpus_per_node, RunStore.at(d))
        sc = res.group.scaling_config()
        trials = []
        for _ in range(concurrent + 1):
            driver = placement_group([{"CPU": res.cpus}], strategy="PACK")  # the Tune trial (the group's driver)
            workers = placement_group([sc.resources_per_worker] * sc.num_workers, strategy=sc.placement_strategy)
            trials.append((driver, workers))
        ready = [w for _, w in trials[:concurrent]]
        ray.get([w.ready() for w in ready], timeout=120)
        placed = []
        for _, w in trials[:concurrent]:
            per_node = Counter(placement_group_table(w)["bundles_to_node_id"].values())
            placed.append(sorted(per_node.values(), reverse=True))
            assert head not in per_node, "a worker was placed on the CPU head"
        extra = trials[-1][1]
        waiting, _ = ray.wait([extra.ready()], timeout=2)  # every GPU is taken: it cannot be placed
        demand = [g for g in pending_demand(cluster.address) if g["bundles"] == sc.num_workers]
        free_gpus = ray.available_resources().get("GPU", 0.0)
        return {"nodes": nodes, "gpus_per_node": gpus_per_node, "node_count_per_trial": node_count,
                "workers_per_trial": sc.num_workers, "strategy": sc.placement_strategy,
                "resources_per_worker": sc.resources_per_worker, "driver_bundle": {"CPU": res.cpus},
                "placed": placed, "free_gpus_when_full": free_gpus, "extra_trial_waits": not waiting,
                "demand": demand, "cluster_start_s": round(started, 1),
                "total_s": round(time.perf_counter() - t0, 1)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--node-count-per-trial", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object (for tests)")
    a = p.parse_args()
    r = simulate(a.nodes, a.gpus_per_node, a.node_count_per_trial, a.concurrent)
    if a.json:
        print(json.dumps(r))
        return
    print(f"simulated cluster: CPU head + {r['nodes']} nodes x {r['gpus_per_node']} GPUs "
          f"(up in {r['cluster_start_s']} s)")
    print(f"job: node_count_per_trial {r['node_count_per_trial']}, {a.concurrent} concurrent trials -> "
          f"{r['workers_per_trial']} workers per trial x {r['resources_per_worker']}, {r['strategy']}; "
          f"trial driver {r['driver_bundle']}")
    for i, per_node in enumerate(r["placed"]):
        print(f"trial {i}: workers on {len(per_node)} nodes, per node {per_node}")
    print(f"GPUs free with {a.concurrent} trials running: {r['free_gpus_when_full']:g}; "
          f"one more trial waits: {r['extra_trial_waits']}")
    for g in r["demand"]:
        print(f"autoscaler demand for it: {g['bundles']} x {g['bundle']} {g['constraints']}")
    print(f"total {r['total_s']} s")


if __name__ == "__main__":
    main()

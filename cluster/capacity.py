"""Spot and on-demand capacity (issue 30, part 4): which nodes a cloud may take back, and keeping a sweep's
bookkeeping off them.

A node is *spot* when its Ray label ``ray.io/market-type`` says ``spot`` (Ray's own label for it: KubeRay sets it
from the pod's ``RAY_NODE_MARKET_TYPE``; a cluster launcher YAML gives a node type ``labels:``, as the files in
``cluster/`` do). Every other node counts as on-demand: a cluster that marks nothing runs as before.

What stays off spot nodes:

- the trial drivers of data-parallel trials (a Tune trial that only waits on its Ray Train workers, and Ray Train's
  controller, which Ray places beside it): their placement group carries the label selector :data:`OFF_SPOT`, so
  Ray places them on nodes that are not spot (a node without the label matches). The workers themselves, and
  one-worker trials, train wherever the GPUs are, spot or not: a spot node's notice makes them checkpoint at the
  next step (``trainers.preemption``);
- the sweep's controller (``visionsweep run`` / ``resume``: Tune's experiment state, the run folder): it runs where
  the user started it, so :func:`controller_problem` refuses a spot node whose local disk would hold the run
  folder, and warns when the run folder is on storage (a resume goes on from there).

Each evaluation of a trial says on how many spot nodes its workers ran (``spot_workers``; the engine counts them
once per start), and ``visionsweep status`` shows which trials run on spot capacity.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from trainers.preemption import MARKET_LABEL, SPOT, market

__all__ = ["MARKET_LABEL", "OFF_SPOT", "SPOT", "controller_problem", "driver_places", "market", "spot_node_types",
           "spot_nodes"]

#: Ray's label selector for "any node that is not spot" (a node without the label matches it)
OFF_SPOT = {MARKET_LABEL: f"!{SPOT}"}


def spot_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Node ids of the live nodes (``ray.nodes()``) labelled spot."""
    return [n["NodeID"] for n in nodes if n.get("Alive") and market(n.get("Labels")) == SPOT]


def spot_node_types(node_types: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the autoscaler's node types (``cluster.connect.autoscaler_node_types``) labelled spot."""
    return sorted(name for name, t in node_types.items() if market(t.get("labels")) == SPOT)


def driver_places(nodes: Iterable[Mapping[str, Any]], node_types: Mapping[str, Mapping[str, Any]],
                  cpus: float) -> list[str]:
    """Where a trial driver of ``cpus`` CPUs can go off spot: live on-demand nodes with that many CPUs (by node
    id) and on-demand node types the autoscaler can launch with them (by name)."""
    live = [n["NodeID"] for n in nodes if n.get("Alive") and market(n.get("Labels")) != SPOT
            and float((n.get("Resources") or {}).get("CPU", 0)) >= cpus]
    types = [name for name, t in node_types.items() if market(t.get("labels")) != SPOT
             and float((t.get("resources") or {}).get("CPU", 0)) >= cpus]
    return live + sorted(types)


def controller_problem(labels: Mapping[str, Any] | None, run_folder_remote: bool, where: str) -> tuple[str, str] | None:
    """("error" | "warning", why) when the sweep's controller runs on a spot node, else None.

    A spot node takes its disk with it: a run folder there is lost at the node's preemption, so that is refused;
    with the run folder on storage only the controller's progress since the last upload is at stake, which
    ``visionsweep resume`` recovers from another machine."""
    if market(labels) != SPOT:
        return None
    move = ("submit the job to an on-demand node (the head, or `ray job submit --entrypoint-label-selector "
            f"'{{\"{MARKET_LABEL}\": \"!{SPOT}\"}}' ...`)")
    if not run_folder_remote:
        return ("error", f"the sweep's controller runs on a spot node (Ray label {MARKET_LABEL}={SPOT}) and its run "
                         f"folder {where} is on that node's disk, which goes with the node when the cloud takes it "
                         f"back: {move}, or write the run folder to storage (--output az://... or s3://...)")
    return ("warning", f"the sweep's controller runs on a spot node (Ray label {MARKET_LABEL}={SPOT}): if the cloud "
                       f"takes it back the sweep stops, and `visionsweep resume {where}` goes on from another "
                       f"machine; {move} to avoid that")

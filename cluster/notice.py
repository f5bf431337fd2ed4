"""A cloud's preemption notice, passed on to Ray: ``python -m cluster.notice --cloud aws`` on each spot node.

A spot VM is told before it is taken: AWS through the instance metadata service (``spot/instance-action``, two
minutes ahead), Azure through Scheduled Events (a ``Preempt`` event, about 30 seconds ahead), Google Cloud through
the metadata server (``instance/preempted``, about 30 seconds). Ray does not read these by itself (its cluster
launcher has no notice handler; KubeRay leaves it to the node's termination handler), so this watcher does: it polls
the cloud's endpoint from the node and, once the notice is there, drains its Ray node with the preemption reason
and the cloud's deadline. That is the notice ``trainers.preemption`` watches for: every trial on the node then
checkpoints at its next optimiser step and goes on elsewhere (docs/runs.md#spot-capacity).

Started by the cluster files' worker start commands on every worker node, it exits at once on a node that is not
labelled spot (``ray.io/market-type``, ``cluster.capacity``). ``--metadata-url`` points it at another endpoint (the
tests' stand-in for the cloud's).

Hand-written: the clouds' metadata endpoints are three small HTTP reads, and Ray's drain call is one GCS request;
no library joins them.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from trainers.preemption import SPOT, market

log = logging.getLogger("visionsweep.notice")

POLL_S = 2.0  # well inside the shortest notice (30 s)
TIMEOUT_S = 2.0  # one metadata read; the endpoints answer locally in milliseconds


@dataclass(frozen=True)
class Notice:
    """The cloud said the VM will be taken; ``deadline`` in seconds since the epoch (0: not said)."""

    deadline: float
    what: str


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str]:
    """(HTTP status, body); 404 and the like are answers, not errors."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def aws(base: str) -> Notice | None:
    """EC2: ``spot/instance-action`` is 404 until the notice, then ``{"action": "terminate"|"stop", "time": ISO}``
    (IMDSv2: a session token first)."""
    status, token = _get(f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, "PUT")
    headers = {"X-aws-ec2-metadata-token": token} if status == 200 else {}
    status, body = _get(f"{base}/latest/meta-data/spot/instance-action", headers)
    if status != 200:
        return None
    doc = json.loads(body)
    return Notice(_iso(doc["time"]) if doc.get("time") else 0.0, f"EC2 spot instance-action {doc.get('action')}")


def azure(base: str) -> Notice | None:
    """Azure: Scheduled Events lists a ``Preempt`` event naming this VM (its name from the instance metadata)."""
    h = {"Metadata": "true"}
    status, name = _get(f"{base}/metadata/instance/compute/name?api-version=2021-02-01&format=text", h)
    status, body = _get(f"{base}/metadata/scheduledevents?api-version=2020-07-01", h)
    if status != 200:
        return None
    for ev in json.loads(body).get("Events") or []:
        if ev.get("EventType") == "Preempt" and (not name or name in (ev.get("Resources") or [name])):
            when = ev.get("NotBefore")
            deadline = email.utils.parsedate_to_datetime(when).timestamp() if when else 0.0
            return Notice(deadline, f"Azure Scheduled Event Preempt {ev.get('EventId', '')}".strip())
    return None


def gcp(base: str) -> Notice | None:
    """Google Cloud: ``instance/preempted`` turns ``TRUE``; the VM has about 30 s from then."""
    status, body = _get(f"{base}/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"})
    if status == 200 and body.strip().upper() == "TRUE":
        return Notice(time.time() + 30, "GCE instance preempted")
    return None


#: the clouds whose notice is read, by name, with their metadata endpoint
CLOUDS: dict[str, tuple[Callable[[str], Notice | None], str]] = {
    "aws": (aws, "http://169.254.169.254"),
    "azure": (azure, "http://169.254.169.254"),
    "gcp": (gcp, "http://metadata.google.internal"),
}


def _node(gcs, node_id: str | None, wait_s: float = 60.0) -> tuple[str, dict]:
    """(node id, labels) of the node to drain: ``node_id``, else the one alive node with this machine's IP. Started
    right after ``ray start``, it gives the node ``wait_s`` to register."""
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    deadline = time.monotonic() + wait_s
    while True:
        alive = {k.hex(): v for k, v in gcs.get_all_node_info().items() if v.state == 0}
        here = [node_id] if node_id in alive else [] if node_id else \
            [k for k, v in alive.items() if v.node_manager_address == ip]
        if len(here) == 1:
            return here[0], dict(alive[here[0]].labels)
        if len(here) > 1:
            raise SystemExit(f"{len(here)} Ray nodes run at {ip}: name this one with --node-id")
        if time.monotonic() > deadline:
            raise SystemExit(f"--node-id {node_id}: no such alive node in the cluster" if node_id else
                             f"no Ray node runs at {ip} (after {wait_s:.0f} s): start Ray on this machine first")
        time.sleep(1.0)


def watch(cloud: str, address: str, node_id: str | None = None, metadata_url: str | None = None,
          poll_s: float = POLL_S, only_spot: bool = True) -> int:
    """Poll the cloud's notice and drain this Ray node when it comes; returns the exit status."""
    import ray._private.services as services
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    read, default = CLOUDS[cloud]
    base = (metadata_url or default).rstrip("/")
    try:
        gcs = GcsClient(address=services.canonicalize_bootstrap_address_or_die(address))
    except Exception as e:  # noqa: BLE001 - no cluster there: say so, not Ray's traceback
        raise SystemExit(f"--address {address}: no Ray cluster answers there ({str(e).splitlines()[0]}); start Ray "
                         "on this node first (the cluster files start this watcher after `ray start`)") from None
    node, labels = _node(gcs, node_id)
    if only_spot and market(labels) != SPOT:
        log.info("node %s is not labelled spot: no notice to watch", node[:12])
        return 0
    log.info("watching %s's preemption notice at %s for node %s", cloud, base, node[:12])
    while True:
        try:
            notice = read(base)
        except (OSError, ValueError, KeyError) as e:  # the endpoint not up yet, a reply we cannot read: next poll
            log.debug("%s notice: %s", cloud, e)
            notice = None
        if notice is not None:
            deadline_ms = int(notice.deadline * 1000) if notice.deadline > 0 else 0
            accepted, why = gcs.drain_node(node, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                           notice.what, deadline_ms)
            if accepted:
                log.warning("%s: node %s drained (deadline %s): its trials checkpoint at their next step", notice.what,
                            node[:12], time.strftime("%H:%M:%S", time.localtime(notice.deadline))
                            if notice.deadline else "none")
                return 0
            log.error("%s: Ray did not accept draining node %s: %s; trying again", notice.what, node[:12], why)
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.notice", description=__doc__.split("\n\n")[0])
    p.add_argument("--cloud", required=True, choices=sorted(CLOUDS))
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "auto", help="the GCS (default: this node's)")
    p.add_argument("--node-id", help="the Ray node to drain (default: the one at this machine's IP)")
    p.add_argument("--metadata-url", help="the cloud's metadata endpoint (default: the cloud's own)")
    p.add_argument("--poll-s", type=float, default=POLL_S)
    p.add_argument("--any-node", action="store_true", help="watch a node not labelled spot too")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s notice: %(message)s")
    try:
        return watch(a.cloud, a.address, a.node_id, a.metadata_url, a.poll_s, only_spot=not a.any_node)
    except KeyboardInterrupt:  # stopped by hand: nothing to clean up
        return 130


if __name__ == "__main__":
    sys.exit(main())

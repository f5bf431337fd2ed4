"""Preemption without lost work (issue 30): a node told to leave checkpoints its trials at the next optimiser step,
and each trial goes on from that step on another node.

A cloud's spot or preemptible VM gets a notice (30 s to 2 min) before it is taken; Ray's way of passing it on is the
drain API (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N``, what autoscaler
v2 and KubeRay call; ``cluster.notice`` calls the same on a cloud's notice). From then on the node takes no new work,
and the GCS lists it among the draining nodes. :class:`LeaveNotice` watches that list for the training process's own
node. The engine (``trainers.engine.train``) asks it at every optimiser-step boundary (a data-parallel group agrees
through one all-reduce, as every worker must stop at the same step); when it is set, rank 0 writes a *step
checkpoint* (the model, optimiser, scheduler, gradient scaler, the loop's counters and how many batches of the
epoch are done) into :class:`StepStore`, beside the trial's Ray Train checkpoints on the run's storage, and every
worker raises :class:`Preempted`. Tune / Train restart the trial where there is room (not on the draining node),
counting a preemption, not one of its ``visionsweep.trial_retries``, and the engine goes on from the step
checkpoint: the same epoch, the same sampler permutation with the done batches skipped, so nothing is trained twice.
It is not reported to Tune: the policies see one continuous trial, whose next evaluation says where it resumed
(``resumed_from_step``).

Hand-written because Tune's one-worker trials (most of a sweep's) get no notice of a node leaving, and Ray Train's
(``ray.train.get_preemption_info``, for the workers of a group) is read every 5 s through a barrier and leaves the
checkpoint to the training function, through a report that Tune's policies would see. One notice serves both here.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ray.exceptions import RayActorError

log = logging.getLogger(__name__)

#: a node's Ray label that says whether the cloud may take it back (``spot``) or not (``on-demand``; a node without
#: the label counts as on-demand); ``cluster.capacity`` keeps a sweep's bookkeeping off spot nodes by it
MARKET_LABEL = "ray.io/market-type"  # Ray's own key (ray._raylet.RAY_NODE_MARKET_TYPE_KEY)
SPOT, ON_DEMAND = "spot", "on-demand"
POLL_S = 1.0  # how often the GCS's draining nodes are read: well inside any cloud's notice
STEP_DIR = "preempted"  # the step checkpoint's folder under the trial's Ray Train storage
COMPLETE = "COMPLETE"  # written last into it


def market(labels: Any) -> str:
    """``spot`` or ``on-demand`` for a node's Ray labels."""
    return SPOT if str((labels or {}).get(MARKET_LABEL, "")).lower() == SPOT else ON_DEMAND


class Preempted(RayActorError):
    """The trial stopped at a step boundary because its node is leaving; its step checkpoint is written.

    Ray's own error for an actor its node took with it, with ``preempted`` set: Tune then restarts the trial without
    counting a failure, as it does when a preempted node ends the trial's process (so ``visionsweep.trial_retries``
    is kept for real failures, and a trial preempted five times still goes on). Ray Train reads a data-parallel
    group's stop the same way: a preemption, retried within ``FailureConfig.max_preemption_failures`` (unlimited),
    not one of ``max_failures``."""

    def __init__(self, message: str = "the node is leaving"):
        super().__init__(error_msg=message, preempted=True)


class LeaveNotice:
    """Set once this process's Ray node is draining (see the module docstring); ``deadline_ms`` is when the node
    will be taken (0: no deadline given); ``spot``: whether the node is labelled spot (None outside Ray). A daemon
    thread reads the GCS every ``poll_s`` seconds; reads that fail (the GCS restarting) are skipped."""

    def __init__(self, poll_s: float = POLL_S):
        import ray

        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.spot: bool | None = market(ctx.get_node_labels()) == SPOT  # a spot node (cluster.capacity)
        self.deadline_ms: int | None = None
        self.noticed_at: float | None = None
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(poll_s,), name="visionsweep-leave-notice",
                                        daemon=True)
        self._thread.start()

    def _watch(self, poll_s: float) -> None:
        from ray._private.state import state

        while not self._stop.wait(poll_s):
            try:
                draining = state.get_draining_nodes()
            except Exception:  # noqa: BLE001 - a read that fails is tried again at the next poll
                continue
            if self.node_id in draining:
                self.deadline_ms, self.noticed_at = int(draining[self.node_id]), time.time()
                log.warning("node %s is draining (deadline %s): the trial checkpoints at its next step and goes on "
                            "elsewhere", self.node_id[:12], self.deadline_ms or "none")
                self._event.set()
                return

    @classmethod
    def of_this_node(cls, poll_s: float = POLL_S) -> "LeaveNotice":
        """The notice of this process's node; one that is never set where the process is not a Ray worker."""
        import ray

        if not ray.is_initialized():
            notice = cls.__new__(cls)
            notice.node_id, notice.deadline_ms, notice.noticed_at, notice.spot = "", None, None, None
            notice._event, notice._stop = threading.Event(), threading.Event()
            return notice
        return cls(poll_s)

    def is_set(self) -> bool:
        return self._event.is_set()

    def close(self) -> None:
        self._stop.set()


class StepStore:
    """The trial's step checkpoint on the run's storage: ``<storage_path>/<trial>/preempted`` (``storage_path`` and
    its pyarrow ``filesystem``, None for a local path, are the trial's Ray Train storage: shared by its nodes)."""

    def __init__(self, storage_path: str, filesystem: Any, trial: str):
        from pyarrow.fs import LocalFileSystem

        self.fs = filesystem or LocalFileSystem()
        self.path = f"{storage_path.rstrip('/')}/{trial}/{STEP_DIR}"

    def exists(self) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(f"{self.path}/{COMPLETE}").type == FileType.File

    def save(self, local: Path) -> None:
        """Replace the stored step checkpoint with the folder ``local``; its ``COMPLETE`` marker is written last,
        so a checkpoint cut off half-way by the node's end is never read as whole."""
        from pyarrow.fs import copy_files

        self.clear()
        self.fs.create_dir(self.path, recursive=True)
        copy_files(str(local), self.path, destination_filesystem=self.fs)
        with self.fs.open_output_stream(f"{self.path}/{COMPLETE}") as f:
            f.write(b"1\n")

    def fetch(self, dest: Path) -> Path | None:
        """The stored step checkpoint copied to ``dest``, or None when there is none."""
        from pyarrow.fs import copy_files

        if not self.exists():
            return None
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        copy_files(self.path, str(dest), source_filesystem=self.fs)
        return dest

    def clear(self) -> None:
        from pyarrow.fs import FileType

        if self.fs.get_file_info(self.path).type == FileType.Directory:
            self.fs.delete_dir(self.path)

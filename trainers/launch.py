"""One Ray Tune trial: sampled values -> resolved hyperparameters -> the training engine, in-process or data-parallel.

A trial of one worker runs :func:`trainers.engine.train` in the Tune trial's own process, and each
evaluation is one ``tune.report`` (with a model package as checkpoint when one is due).

A trial of several workers (``properties.node_count_per_trial`` > 1, or several GPUs per node, SPEC
§3.6, §3.8, §11.1) is the *driver* of a Ray Train ``TorchTrainer`` (Ray Train V2's pattern for Tune):
the workers run the same engine under DDP (gloo on CPU, NCCL on GPU), rank 0's reports reach Tune
through ``TuneReportCallback``, and checkpoints are written by rank 0 to
``<run>/ray/train/<trial id>/checkpoint_*``. Because the Train run's name is the trial id, a restarted
trial (a retry, or ``visionsweep resume``) goes on from that run's last checkpoint; a worker that dies
is restarted from it by Train's ``FailureConfig``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from trainers.data import PreparedData
from trainers.data.credentials import EnvCredentials
from trainers.data.urls import is_remote
from trainers.errors import VisionsweepError
from trainers.hyperparameters import resolve_hyperparameters
from trainers.logs import TrialOutput, apply_in_worker
from trainers.models.weights.sources import WeightsConfig
from trainers.staging import reclaim, staging_dir
from trainers.workers import Workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """How many workers train one trial and with what (decided once per job by the controller)."""

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    spread: bool = False  # one worker per node on several nodes: place the workers on different nodes
    max_failures: int = 0  # restarts of a data-parallel group after a worker dies
    amp: bool = True
    channels_last: bool = True
    sync_batchnorm: bool = True
    storage_path: str = ""  # Ray Train's storage for the group's checkpoints
    storage_filesystem: Any = None  # pyarrow filesystem for storage_path (Azure Blob), else None

    def step_store(self, trial_id: str):
        """Where the trial's step checkpoint goes when its node is told to leave (``trainers.preemption``): beside
        its Ray Train checkpoints on the run's storage; None without storage (an in-process test)."""
        from trainers.preemption import StepStore

        return StepStore(self.storage_path, self.storage_filesystem, trial_id) if self.storage_path else None

    def engine_workers(self, rank: int = 0, world: int = 1) -> Workers:
        return Workers(rank, world, self.amp, self.channels_last, self.sync_batchnorm)

    def scaling_config(self):
        """Ray Train's placement of the group: a bundle per worker, PACK, or SPREAD when each node runs one worker.

        PACK fills whole nodes: ``node_count_per_trial: 4`` on 8-GPU nodes is 32 workers on 4 nodes, 8 each (SPREAD
        would put 2 on each of 16 nodes, scattering one trial's all-reduce over the cluster). With one worker per
        node (CPU nodes, ``distributed: false``) PACK would put them all on one node, so they spread."""
        import ray.train

        resources = {"CPU": self.cpus_per_worker, **({"GPU": 1} if self.use_gpu else {})}
        return ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                       resources_per_worker=resources,
                                       placement_strategy="SPREAD" if self.spread else "PACK")


def declared_gpus_only() -> bool:
    """This process runs on a cluster whose GPUs are declared resources with no CUDA behind them: Ray's fake
    multi-node provider (``cluster.autoscaling``, which sets ``RAY_FAKE_CLUSTER`` on every process of it). Its GPU
    workers reserve their GPU, so that the autoscaler and placement behave as on a GPU cluster, and train on the CPU."""
    return bool(os.environ.get("RAY_FAKE_CLUSTER"))


def _threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _package_report(report_fn: Callable[..., None], checkpoint_cls, output: TrialOutput | None = None) -> Callable:
    """The engine's ``report(metrics, save)`` seam: ``save`` writes a package into a temp dir checkpoint; each
    report carries what the trial printed since the last one (``log``, for the run folder's ``log.txt``)."""

    def report(metrics: dict[str, Any], save) -> None:
        if output is not None:
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool))
            log.info("evaluation: %s", shown)
            metrics = {**metrics, "log": output.take()}
        if save is None:
            report_fn(metrics)
            return
        with staging_dir() as d:
            save(d)
            report_fn(metrics, checkpoint=checkpoint_cls.from_directory(d))
    return report


def _materialize(data: PreparedData) -> None:
    """Without ``stream_image_files``, this node's cache holds every image before training starts (§11.2)."""
    if not data.store.stream:
        data.store.materialize([r.image_url for r in (*data.train, *data.valid)], total_bytes=data.remote_bytes)


@dataclass(frozen=True)
class Session:
    """Where a training process reports and finds its checkpoint: Tune's session (a one-worker trial) or Ray
    Train's (a worker of a data-parallel group); the same calls, so one trial body serves both."""

    report: Callable[..., None]
    checkpoint_cls: Any
    get_checkpoint: Callable[[], Any]


def _train_here(h: dict[str, Any], data: PreparedData, session: Session, workers: Workers, cpus: float,
                weights: WeightsConfig, init_package: str | None, device: str | None = None,
                log_level: str = "info", steps: Any = None) -> None:
    """The trial body, in this process: threads, this node's images, then the engine from the last checkpoint
    (a restarted trial or worker, §8.7) or from what a fresh trial starts from: an earlier model
    (``checkpoint_run_id``) wins over the published weights, which are fetched here, once per node. ``steps``: the
    trial's ``trainers.preemption.StepStore``: a node told to leave checkpoints there at the next step, and a
    restart goes on from it."""
    # the engine, the models and the weights resolver import sklearn, timm and torchvision: only the trial's
    # process needs them, not the driver that pickles this trainable
    from trainers.engine import train
    from trainers.models.weights.resolve import initial_weights
    from trainers.package.folder import fetch_package
    from trainers.preemption import LeaveNotice

    with TrialOutput(log_level) as output, contextlib.closing(LeaveNotice.of_this_node()) as leave:
        _threads(cpus)
        reclaim()  # what trials stopped on this node before this one left behind
        _materialize(data)
        report = _package_report(session.report, session.checkpoint_cls, output)
        ckpt = session.get_checkpoint()
        log.info("trial: %s for %s on %d training / %d validation images; hyperparameters: %s", h.get("model_name"),
                 data.task, len(data.train), len(data.valid),
                 ", ".join(f"{k}={v}" for k, v in h.items() if k not in ("model_name", "advanced_settings")))
        if ckpt is None:
            if init_package and is_remote(init_package):  # an earlier model on storage: once per node
                init_package = str(fetch_package(init_package, data.storage_options))
            init = init_package or initial_weights(h, data.task, weights)
            train(h, data, report, weights=init, device=device, workers=workers, leave=leave, steps=steps)
            return
        log.info("trial: goes on from its last checkpoint")
        with ckpt.as_directory() as d:
            train(h, data, report, resume_from=d, device=device, workers=workers, leave=leave, steps=steps)


def train_trial(config: dict[str, Any], *, data: PreparedData, fixed: dict[str, Any],
                weights: WeightsConfig, cpus: float,
                init_package: str | None = None, group: Group = Group(), primary: str = "accuracy",
                credentials: EnvCredentials = EnvCredentials(), failed: dict[str, str] | None = None,
                log_level: str = "info") -> None:
    """The Tune trainable. ``failed``: trials of a resumed sweep whose error was final (the job's own
    settings or data, or a second error); they fail again at once with their error instead of training."""
    from ray import tune

    apply_in_worker(log_level)  # log_verbosity reaches the trial's process too
    previous = (failed or {}).get(tune.get_context().get_trial_id())
    if previous is not None:
        suffix = " (failed before the sweep was resumed; not trained again)"
        raise VisionsweepError(previous if previous.endswith(suffix) else previous + suffix)
    credentials.apply()
    h = resolve_hyperparameters(data.task, fixed, config)
    if group.workers > 1:
        _run_group(h, data, init_package, weights, group, primary, credentials, log_level)
        return
    _train_here(h, data, Session(tune.report, tune.Checkpoint, tune.get_checkpoint), group.engine_workers(), cpus,
                weights, init_package, log_level=log_level,
                steps=group.step_store(tune.get_context().get_trial_id()))


def _run_group(h: dict[str, Any], data: PreparedData, init_package: str | None, weights: WeightsConfig, group: Group,
               primary: str, credentials: EnvCredentials, log_level: str = "info") -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    loop = functools.partial(_worker_loop, h=h, data=data, init_package=init_package, weights=weights,
                             group=group, credentials=credentials, log_level=log_level,
                             trial_id=tune.get_context().get_trial_id())
    trainer = TorchTrainer(
        loop,
        scaling_config=group.scaling_config(),
        # NCCL needs CUDA: a cluster whose GPUs are only declared trains its GPU workers on the CPU, over gloo
        **({"torch_config": TorchConfig(backend="gloo")} if declared_gpus_only() else {}),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(), storage_path=group.storage_path,
            storage_filesystem=group.storage_filesystem, callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=group.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=primary,
                                                         checkpoint_score_order="max"),
        ),
    )
    trainer.fit()


def _worker_loop(config: dict[str, Any] | None = None, *, h: dict[str, Any], data: PreparedData,
                 init_package: str | None, weights: WeightsConfig, group: Group, credentials: EnvCredentials,
                 log_level: str = "info", trial_id: str = "") -> None:
    """One worker of a data-parallel trial (Ray Train has set up ``torch.distributed``)."""
    import ray.train
    import ray.train.torch

    apply_in_worker(log_level)
    credentials.apply()
    ctx = ray.train.get_context()
    workers = group.engine_workers(ctx.get_world_rank(), ctx.get_world_size())
    device = "cpu" if declared_gpus_only() else str(ray.train.torch.get_device())
    _train_here(h, data, Session(ray.train.report, ray.train.Checkpoint, ray.train.get_checkpoint), workers,
                group.cpus_per_worker, weights, init_package, device=device, log_level=log_level,
                steps=group.step_store(trial_id))

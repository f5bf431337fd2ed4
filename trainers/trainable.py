"""One Ray Tune trial: sampled values -> resolved hyperparameters -> ``train`` -> ``tune.report``.

Each evaluation is one ``tune.report`` call (one interval for early termination, §8.3); when the loop
says a checkpoint is due, the report carries a model package as its checkpoint.
"""

from __future__ import annotations

import tempfile
from typing import Any

from trainers.data import PreparedData
from trainers.hyperparameters import resolve_hyperparameters
from trainers.loop import train


def train_trial(config: dict[str, Any], *, data: PreparedData, fixed: dict[str, Any],
                weights: dict[str, str], download_weights: bool, cpus: float,
                init_package: str | None = None) -> None:
    from ray import tune

    import torch

    torch.set_num_threads(max(1, int(cpus)))
    h = resolve_hyperparameters(data.task, fixed, config)

    def report(metrics: dict[str, Any], save) -> None:
        if save is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="visionsweep-ckpt-") as d:
            save(d)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    init = init_package or weights.get(h["model_name"])
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        train(h, data, report, weights=init, download_weights=download_weights)
        return
    with ckpt.as_directory() as d:  # a restored trial goes on from its last checkpoint (§8.7)
        train(h, data, report, weights=None, resume_from=d)


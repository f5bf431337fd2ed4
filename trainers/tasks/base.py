"""The task interface: what the one training loop asks of a problem type (SPEC §1).

The engine (``trainers.engine``) owns epochs, the optimiser and schedule, gradient accumulation,
AMP, DDP, evaluation cadence, early stopping and checkpoints. A :class:`Task` owns everything that
differs between classification, detection and segmentation: how a model is built and frozen, what a
training sample is, the loss of a batch, and how an evaluation becomes metrics. Tasks are registered
by their ``task:`` literal in ``trainers.tasks``; adding a task is adding a module, not a branch in
the loop, the controller or serving.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainers.workers import Runtime


class Task:
    name: str = ""
    primary_metric: str = ""
    #: the model takes one NCHW batch tensor (classification) rather than a list of images (detection)
    channels_last_ok: bool = True
    #: how the DataLoader batches samples (None: torch's default stacking)
    collate: Callable[[list], Any] | None = None

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}

    # --- before training -----------------------------------------------------------------------
    def check(self, h: dict[str, Any]) -> None:
        """Raise a settings error (``trainers.engine.TrainingError``) for values this task cannot train with."""

    def architecture(self, h: dict[str, Any], weights: Any) -> dict[str, Any]:
        """Choices of a new model's architecture that follow from what it starts from (``model.json``)."""
        return {}

    def build_model(self, h: dict[str, Any], weights: Any, architecture: dict[str, Any]) -> nn.Module:
        """``weights``: an ``InitialWeights``, a weights file or package path, or None (random initialisation);
        ``architecture``: :meth:`architecture`'s choices, or those a package recorded."""
        raise NotImplementedError

    def freeze(self, model: nn.Module, h: dict[str, Any]) -> None:
        """``layers_to_freeze`` (§6.3)."""

    def train_dataset(self, h: dict[str, Any], data) -> Dataset:
        raise NotImplementedError

    def valid_dataset(self, h: dict[str, Any], data) -> Dataset:
        raise NotImplementedError

    def prepare(self, h: dict[str, Any], data, device: torch.device) -> None:
        """Per-trial state the loss needs (class weights ...), once the data is known."""

    # --- training and evaluation ---------------------------------------------------------------
    def loss(self, net: nn.Module, batch: Any, rt: Runtime) -> tuple[torch.Tensor, int]:
        """(the batch's mean loss, the number of images in it)."""
        raise NotImplementedError

    def evaluate(self, net: nn.Module, loader: DataLoader, rt: Runtime, h: dict[str, Any]) -> dict[str, Any]:
        """Metrics over the *whole* validation set (each worker holds the slice rank::world of it)."""
        raise NotImplementedError

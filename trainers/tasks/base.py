"""The task interface: what the one training loop asks of a problem type (SPEC §1).

The engine (``trainers.engine``) owns epochs, the optimiser and schedule, gradient accumulation,
AMP, DDP, evaluation cadence, early stopping and checkpoints. A :class:`Task` owns everything that
differs between classification, detection and segmentation: how a model is built and frozen, what a
training sample is, the loss of a batch, and how an evaluation becomes metrics. Tasks are registered
by their ``task:`` literal in ``trainers.tasks``; adding a task is adding a module, not a branch in
the loop, the controller or serving.

What leaves with a trained model is the task's too: the inference settings its package holds and how a package's
model is built (``trainers.package``), its ONNX graph (``trainers.package.onnx``), how a batch of images becomes the
service's response JSON (``serving.predictor``), how a response is drawn (``serving.draw``) and which page of
validation predictions the run report shows (``scheduler.predictions``). ``tests/test_layout.py`` keeps those
modules free of comparisons with a task's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainers.errors import VisionsweepError
from trainers.models.factory import create_model
from trainers.workers import Runtime


class Task:
    name: str = ""
    primary_metric: str = ""
    #: the model takes one NCHW batch tensor (classification) rather than a list of images (detection)
    channels_last_ok: bool = True
    #: how the DataLoader batches samples (None: torch's default stacking)
    collate: Callable[[list], Any] | None = None
    #: instance masks: each predicted box carries its polygon (and mask) in the response (``serving.predictor``)
    segmentation: bool = False
    #: multi-label: a drawn response captions every label at or above the threshold, not the best one
    #: (``serving.draw``)
    multi: bool = False
    #: the page of validation predictions the run report shows: a key of ``scheduler.predictions.REPORTS``
    report_predictions: str = "samples"
    #: how a package is scored on a held-out set: a key of ``scheduler.holdout.SCORES``, or None (not scored)
    holdout_score: str | None = None

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
        ``architecture``: :meth:`architecture`'s choices, or those a package recorded. The one model factory builds
        it, as it builds a package's model (:meth:`package_model`)."""
        return create_model(h["model_name"], task=self.name, num_classes=len(self.classes), settings=h,
                            weights=weights, architecture=architecture, segmentation=self.segmentation)

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
        """Metrics over the *whole* validation set (each worker holds the slice rank::world of it). Also sets
        :attr:`validation_outputs`: the per-image outputs the run report draws, gathered in the set's order."""
        raise NotImplementedError

    #: the latest :meth:`evaluate`'s per-image outputs, as ``trainers.validation_outputs`` keeps them (None: none):
    #: written with the checkpoint of that evaluation, so the sweep report needs no second inference pass
    validation_outputs: dict[str, Any] | None = None

    # --- the model package (trainers.package) ---------------------------------------------------
    @classmethod
    def inference_settings(cls, h: dict[str, Any]) -> dict[str, Any]:
        """The §9.5 inference settings a package of this task holds, taken from the training hyperparameters."""
        raise NotImplementedError

    def package_model(self, meta: dict[str, Any], settings: dict[str, Any], folder: Path, where: str) -> nn.Module:
        """A package's model, not yet given its weights: ``meta`` is its ``model.json``, ``settings`` its
        (possibly overridden) inference settings, ``folder`` the package folder; errors lead with ``where``. The
        factory that built it for training builds it again, with the architecture the package recorded."""
        return create_model(meta["model_name"], task=self.name, num_classes=meta["num_classes"], settings=settings,
                            architecture=meta.get("architecture", {}), segmentation=self.segmentation,
                            package_folder=folder, where=where)

    def onnx_graph(self, pkg, batch_size: int, size: tuple[int, int] | None, normalization: bool, where: str):
        """The package ``pkg``'s model as a ``trainers.tasks.graphs.OnnxGraph`` (``size``: ``--image-size``,
        ``normalization``: ``enable_onnx_normalization``); errors lead with ``where``."""
        raise VisionsweepError(f"{where}: {self.name} models of {pkg.model_name} cannot be exported to ONNX by this "
                               "version (ONNX export covers the classifiers, the Faster R-CNN / RetinaNet / Mask "
                               "R-CNN detectors and yolov5; MMDetection models need OpenMMLab's mmdeploy)")

    # --- deployment figures (trainers.package.forms) -----------------------------------------------
    def labelled_sample(self, settings: dict[str, Any]) -> Callable[[Any, Any, int], tuple[Any, Any]]:
        """(image, record, view) -> (the model's input, the target ``evaluate`` scores it against), as a
        validation image of a package with inference ``settings`` is read."""
        raise NotImplementedError

    def scoring_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Inference-setting overrides of an exported graph that is to be scored: what ``evaluate`` changes on the
        PyTorch model while it scores (a detector's score threshold) must be baked into the graph the same way."""
        return {}

    def score(self, net: nn.Module, batches, rt: Runtime, h: dict[str, Any]) -> dict[str, Any]:
        """Metrics of a trained model (a package's, or an exported form standing in for it) on labelled batches
        outside training: ``evaluate``, without the per-trial state training prepared."""
        return self.evaluate(net, batches, rt, h)

    def unmeasurable(self, model_name: str) -> str | None:
        """Why an exported graph of ``model_name`` cannot stand in for its package (:meth:`onnx_model`); None: it
        can. Asked before exporting, so that no export is made in vain."""
        return (f"an exported {self.name} graph of {model_name} cannot be measured by this version (classifiers "
                "and torchvision's and YOLOv5's detectors can)")

    def onnx_model(self, session, meta: dict[str, Any], where: str) -> nn.Module:
        """An exported graph (``session``: onnxruntime's, ``meta``: its sidecar) called like the package's model
        (``trainers.tasks.ort``), so that :meth:`score` measures it as it measures the package."""
        raise VisionsweepError(f"{where}: {self.unmeasurable(meta.get('model_name', ''))}")

    # --- serving (serving.predictor) ----------------------------------------------------------
    def input_transform(self, settings: dict[str, Any], where: str) -> Callable | None:
        """How ``serving.predictor`` turns one image into the model's input tensor, or None where the model takes
        whole images (a detector); a setting this task cannot predict with is an error now, led by ``where``,
        not at the first request."""
        return None

"""Multi-class and multi-label image classification (SPEC §1, §6.4, §7.1): targets, loss, metrics.

One image -> one tensor (random resized crop etc. for training, resize + center crop for validation),
one label -> a class index (multi-class) or a multi-hot vector (multi-label). The model is a classifier
of the zoo in ``trainers.models.classifiers`` (or ``huggingface``) taking an NCHW batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from trainers import hyperparameters as hp
from trainers import metrics
from trainers.data.datasets import ImageDataset
from trainers.errors import TrainingError
from trainers.models.classifiers import fixed_input, freeze_layers
from trainers.tasks.base import Task
from trainers.tasks.graphs import Normalised, OnnxGraph
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from trainers.validation_outputs import classification_outputs
from trainers.workers import Runtime, interleave


class ClassificationTask(Task):
    multi: bool = False

    def target(self, label: Any) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def class_weights(self, labels: Sequence[Any], mode: int) -> torch.Tensor | None:
        """``weighted_loss`` (§6.4): 0 none, 1 sqrt of inverse-frequency weights, 2 inverse-frequency weights."""
        if mode == 0:
            return None
        counts = np.zeros(len(self.classes))
        for lab in labels:
            counts += self.target(lab).numpy() if self.multi else np.eye(len(self.classes))[self.index[lab]]
        w = counts.sum() / (len(self.classes) * np.maximum(counts, 1))
        if mode == 1:
            w = np.sqrt(w)
        return torch.tensor(w, dtype=torch.float32)

    # --- the Task interface ----------------------------------------------------------------------
    def check(self, h: dict[str, Any]) -> None:

        if fixed_input(h["model_name"]) and h["training_crop_size"] != h["validation_crop_size"]:
            raise TrainingError(f"{h['model_name']} needs training_crop_size == validation_crop_size (§6.4), "
                                f"but got {h['training_crop_size']} and {h['validation_crop_size']}")
        if h["validation_resize_size"] < h["validation_crop_size"]:
            raise TrainingError(f"validation_resize_size ({h['validation_resize_size']}) must be >= "
                                f"validation_crop_size ({h['validation_crop_size']})")

    def freeze(self, model: nn.Module, h: dict[str, Any]) -> None:
        freeze_layers(model, h["model_name"], h.get("layers_to_freeze"))

    def train_dataset(self, h, data) -> ImageDataset:
        return ImageDataset(data.train, ClassificationSample(self, train_transform(h["training_crop_size"])),
                            data.store)

    def valid_dataset(self, h, data) -> ImageDataset:
        t = eval_transform(h["validation_resize_size"], h["validation_crop_size"])
        return ImageDataset(data.valid, ClassificationSample(self, t), data.store)

    def prepare(self, h, data, device) -> None:
        w = self.class_weights([r.label for r in data.train], h["weighted_loss"])
        self.loss_fn = self.make_loss(None if w is None else w.to(device))

    def loss(self, net, batch, rt: Runtime):
        x, y = batch
        x = x.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
        y = y.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = net(x)
        return self.loss_fn(logits.float(), y), len(x)

    @torch.no_grad()
    def evaluate(self, net, loader, rt: Runtime, h) -> dict[str, Any]:
        """Each worker predicts its slice; rank order restores the set before the metrics."""
        net.eval()
        dev = rt.device
        probs, targets, loss_sum, n = [], [], torch.zeros((), device=dev), 0
        for x, y in loader:
            x = x.to(dev, non_blocking=True, memory_format=rt.memory_format)
            y = y.to(dev, non_blocking=True)
            with rt.autocast():
                logits = net(x)
            logits = logits.float()
            loss_sum += self.loss_fn(logits, y) * len(x)
            n += len(x)
            probs.append(self.probabilities(logits))
            targets.append(y)
        mine = (torch.cat(probs).cpu() if probs else None, torch.cat(targets).cpu() if targets else None,
                float(loss_sum), n)
        parts = [p for p in rt.workers.all_gather(mine) if p[3]]
        all_probs = interleave([p[0] for p in parts])
        all_targets = interleave([p[1] for p in parts])
        out = self.metrics(self.targets_array(all_targets), all_probs.numpy())
        # the report's confusion matrix and mistakes come from these, not from a second inference pass
        self.validation_outputs = classification_outputs(all_probs.numpy(), self.targets_array(all_targets))
        out["validation_loss"] = sum(p[2] for p in parts) / max(1, sum(p[3] for p in parts))
        out["validation_images"] = sum(p[3] for p in parts)
        return out


    # --- what leaves with the model ----------------------------------------------------------------
    @classmethod
    def inference_settings(cls, h: dict[str, Any]) -> dict[str, Any]:
        return {k: h[k] for k in ("validation_resize_size", "validation_crop_size")}

    def package_model(self, meta: dict[str, Any], settings: dict[str, Any], folder: Path, where: str) -> nn.Module:
        # built for the crop it was trained at (model.json's input_size; a package without one: the validation crop)
        crop = meta.get("input_size") or settings.get("validation_crop_size", 224)
        return super().package_model(meta, {**settings, "training_crop_size": crop}, folder, where)

    def onnx_graph(self, pkg, batch_size: int, size, normalization: bool, where: str) -> OnnxGraph:
        """input ``input1`` (B, 3, crop, crop) -> ``output1`` logits; B is a dynamic axis."""
        crop = int(pkg.settings["validation_crop_size"])
        module: nn.Module = Normalised(pkg.model) if normalization else pkg.model
        example = torch.rand(batch_size, 3, crop, crop)
        if not normalization:
            mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            example = (example - mean) / std
        meta_input = {"name": "input1", "shape": ["batch", 3, crop, crop], "layout": "NCHW", "channels": "RGB",
                      "resize": int(pkg.settings["validation_resize_size"]), "center_crop": crop,
                      "normalization_in_graph": normalization,
                      "range": "[0, 1]" if normalization else "(x - mean) / std of RGB in [0, 1]",
                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        meta_outputs = [{"name": "output1", "shape": ["batch", len(pkg.classes)],
                         "meaning": "logits: softmax (multi-class) or per-label sigmoid (multi-label)"}]
        return OnnxGraph(module, example, ["input1"], ["output1"], {"input1": {0: "batch"}, "output1": {0: "batch"}},
                         meta_input, meta_outputs, rows=False)

    def labelled_sample(self, settings: dict[str, Any]):
        return ClassificationSample(self, self.input_transform(settings, ""))

    def score(self, net, batches, rt: Runtime, h: dict[str, Any]) -> dict[str, Any]:
        if getattr(self, "loss_fn", None) is None:  # no class weights outside training: the plain loss
            self.loss_fn = self.make_loss(None)
        return self.evaluate(net, batches, rt, h)

    def unmeasurable(self, model_name: str) -> str | None:
        return None

    def onnx_model(self, session, meta: dict[str, Any], where: str) -> nn.Module:
        from trainers.tasks.ort import OrtLogits

        return OrtLogits(session, meta)

    def input_transform(self, settings: dict[str, Any], where: str):
        return eval_transform(int(settings["validation_resize_size"]), int(settings["validation_crop_size"]))


class ClassificationSample:
    """(image, record) -> (tensor, target); a class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, task: ClassificationTask, transform):
        self.task, self.transform = task, transform

    def __call__(self, image, record, view: int):
        return self.transform(image), self.task.target(record.label)


class MultiClassTask(ClassificationTask):
    name = hp.MULTICLASS
    primary_metric = "accuracy"
    multi = False
    report_predictions = "confusion"
    holdout_score = "accuracy"

    def target(self, label):
        return torch.tensor(self.index[label], dtype=torch.long)

    def make_loss(self, weights: torch.Tensor | None) -> nn.Module:
        return nn.CrossEntropyLoss(weight=weights)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def targets_array(self, targets: torch.Tensor) -> np.ndarray:
        return targets.numpy()

    def metrics(self, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return metrics.multiclass_metrics(y_true, probs)


class MultiLabelTask(ClassificationTask):
    name = hp.MULTILABEL
    primary_metric = "iou"
    multi = True
    report_predictions = "per_label"

    def target(self, label):
        t = torch.zeros(len(self.classes))
        for c in label:
            t[self.index[c]] = 1.0
        return t

    def make_loss(self, weights: torch.Tensor | None) -> nn.Module:
        return nn.BCEWithLogitsLoss(pos_weight=weights)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def targets_array(self, targets: torch.Tensor) -> np.ndarray:
        return targets.numpy()

    def metrics(self, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return metrics.multilabel_metrics(y_true, probs)

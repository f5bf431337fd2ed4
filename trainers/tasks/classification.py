"""One Task class per problem type: how labels become targets, which loss, which probabilities, which metrics.

The training loop never branches on the task; it asks the Task.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from trainers import hyperparameters as hp
from trainers import metrics


class ClassificationTask:
    name: str
    primary_metric: str

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}

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


class MultiClassTask(ClassificationTask):
    name = hp.MULTICLASS
    primary_metric = "accuracy"
    multi = False

    def target(self, label):
        return torch.tensor(self.index[label], dtype=torch.long)

    def loss_fn(self, weights: torch.Tensor | None) -> nn.Module:
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

    def target(self, label):
        t = torch.zeros(len(self.classes))
        for c in label:
            t[self.index[c]] = 1.0
        return t

    def loss_fn(self, weights: torch.Tensor | None) -> nn.Module:
        return nn.BCEWithLogitsLoss(pos_weight=weights)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def targets_array(self, targets: torch.Tensor) -> np.ndarray:
        return targets.numpy()

    def metrics(self, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return metrics.multilabel_metrics(y_true, probs)


TASKS = {hp.MULTICLASS: MultiClassTask, hp.MULTILABEL: MultiLabelTask}


def make_task(task: str, classes: Sequence[str]) -> ClassificationTask:
    return TASKS[task](classes)

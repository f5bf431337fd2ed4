"""Validation metrics of the classification tasks (SPEC §1), computed with scikit-learn.

Multi-class: ``accuracy`` (primary), precision / recall / F1 (macro and weighted), ``auc_macro``
(one-vs-rest ROC AUC, reported only when every class occurs in the validation labels).
Multi-label (threshold 0.5): ``iou`` (primary: per-image |pred ∩ true| / |pred ∪ true|, averaged; an
image with no true and no predicted label scores 1), subset ``accuracy``, precision / recall / F1 (macro
and weighted), ``auc_macro`` over the labels that have both positive and negative validation images.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

MULTILABEL_THRESHOLD = 0.5


def _prf(y_true, y_pred, labels=None) -> dict[str, float]:
    out = {}
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_score_{avg}": float(f)})
    return out


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    n_classes = probs.shape[1]
    y_pred = probs.argmax(1)
    out = {"accuracy": float(skm.accuracy_score(y_true, y_pred))}
    out.update(_prf(y_true, y_pred, labels=list(range(n_classes))))
    if len(np.unique(y_true)) == n_classes:
        if n_classes == 2:
            out["auc_macro"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
        else:
            p = probs / probs.sum(1, keepdims=True)  # guard against float32 rounding of softmax
            out["auc_macro"] = float(skm.roc_auc_score(y_true, p, multi_class="ovr", average="macro"))
    return out


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    y_pred = (probs > MULTILABEL_THRESHOLD).astype(int)
    y_true = y_true.astype(int)
    out = {
        "iou": float(skm.jaccard_score(y_true, y_pred, average="samples", zero_division=1.0)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
    }
    out.update(_prf(y_true, y_pred))
    both = [c for c in range(y_true.shape[1]) if 0 < y_true[:, c].sum() < len(y_true)]
    if both:
        out["auc_macro"] = float(np.mean([skm.roc_auc_score(y_true[:, c], probs[:, c]) for c in both]))
    return out

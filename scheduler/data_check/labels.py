"""Likely label errors: images whose given label the rest of the data set contradicts.

Two steps, as cleanlab's confident learning prescribes (Northcutt et al., "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021, https://arxiv.org/abs/1911.00068):

1. :func:`embed`: every image's features from a pretrained backbone (torchvision's ImageNet MobileNetV2, its
   classifier removed: 1280 global-average-pooled values), computed in Ray tasks on the cluster's nodes, a chunk of
   images per task, reading the images through the job's ``ImageStore`` as training does. The driver never reads
   an image. The backbone is the published weights file the job's weights machinery finds (the weights store, the
   caches); a random backbone would find nothing, so a missing file is an error, never a silent fallback.
2. :func:`find_label_issues`: out-of-fold predicted probabilities of a linear model on the standardised features
   (each image is scored by a model that never saw it, so it cannot have memorised a wrong label), ranked with
   ``cleanlab.filter.find_label_issues`` by self-confidence, the probability the model gives the given label.

A linear probe on frozen features is the cheap end of confident learning: it needs no GPU and no training run, and on
the bundled Fashion-MNIST sample with 5 % of the labels flipped it finds most of them (tests/test_data_check_labels.py
records the figures).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from trainers.errors import DataError, VisionsweepError
from trainers.hyperparameters import MULTICLASS, MULTILABEL

log = logging.getLogger("scheduler.data_check")

#: the tasks the label check reads, and whether a label is one class name (else a tuple of them)
SINGLE_LABEL = {MULTICLASS: True, MULTILABEL: False}
BACKBONE = "mobilenetv2"  # a zoo name (trainers.models.classifiers): its weights entry names the file
FEATURES = 1280  # MobileNetV2's pooled features
INPUT_SIZE = 224  # px, square: MobileNetV2's ImageNet size (tiny images upsampled; see _probe for what 128 costs)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH = 64  # images per forward pass inside a task
MIN_FOLDS = 2


# ----------------------------------------------------------------------------------------------------- features

def backbone_weights(weights_cfg=None):
    """The weights config a task fetches the backbone with, after checking on the driver that the file is there.

    ``weights_cfg``: the job's ``WeightsConfig`` (its store, explicit files, cache folder); None: the defaults
    (``$VISIONSWEEP_WEIGHTS_STORE``, this machine's caches), without downloading. The job's ``pretrained: false``
    does not apply: it is about the trials, and the check needs the published weights whatever the trials start from.
    A file found nowhere is a ``VisionsweepError`` naming it and every place looked."""
    from trainers.models.weights.resolve import check
    from trainers.models.weights.sources import WeightsConfig, WeightsError

    cfg = WeightsConfig.create(download=False) if weights_cfg is None else weights_cfg
    cfg = replace(cfg, pretrained=True)
    try:
        found = check(MULTICLASS, [(BACKBONE, None)], cfg)
    except WeightsError as e:
        # the store's own first line speaks of the trials (and of pretrained: false, which does not help here)
        places = str(e).split("\n", 1)[-1]
        raise VisionsweepError("the label check needs the ImageNet MobileNetV2 backbone's published weights (a "
                               f"random backbone finds no label errors), and they are nowhere:\n{places}") from None
    return cfg.with_seen({e.file: where.where for e, where in found if where.source == "cache"})


def _backbone(cfg, size: int):
    """MobileNetV2 from its published ImageNet weights, classifier removed, in eval mode, on this node."""
    import torch

    from trainers.models.classifiers import build_model
    from trainers.models.weights.resolve import initial_weights

    init = initial_weights({"model_name": BACKBONE}, MULTICLASS, cfg)
    model = build_model(BACKBONE, 1000, size, init)  # 1000 classes: every tensor of the file fits
    model.classifier = torch.nn.Identity()
    return model.eval()


def _embed_chunk(items: Sequence[tuple[str, str]], store: Any, cfg, size: int) -> tuple[np.ndarray, list[str]]:
    """One task: the features of ``items`` ((image_url, 'file:line') pairs), and the errors of the images that
    could not be read (their rows are NaN)."""
    import torch
    from torchvision.transforms import functional as F

    model = _backbone(cfg, size)
    out = np.full((len(items), FEATURES), np.nan, dtype=np.float32)
    errors: list[str] = []
    for start in range(0, len(items), BATCH):
        tensors, rows = [], []
        for i in range(start, min(start + BATCH, len(items))):
            url, where = items[i]
            try:
                image = store.image(url, where)  # RGB, whatever the file's mode (grayscale included)
            except DataError as e:
                errors.append(str(e))
                continue
            t = F.to_tensor(image.resize((size, size), resample=2))  # 2: bilinear
            tensors.append(F.normalize(t, IMAGENET_MEAN, IMAGENET_STD))
            rows.append(i)
        if tensors:
            with torch.inference_mode():
                out[rows] = model(torch.stack(tensors)).numpy()
    return out, errors


def embed(records: list, store, *, chunk: int = 256, weights_cfg=None, size: int = INPUT_SIZE) -> np.ndarray:
    """Image features, (N, 1280) float32 in the order of ``records`` (``trainers.data.tables.Record``).

    Computed in Ray tasks (one CPU each, ``ray`` initialised by the caller), one per ``chunk`` records; each builds
    the backbone once and reads its images through ``store`` (``trainers.data.images.ImageStore``). An image that
    cannot be read is a ``DataError`` naming its line, unless ``store.bad_images`` is ``skip``: its row is then NaN
    (:func:`find_label_issues` leaves it out). ``size``: the square input size in pixels."""
    import ray

    if not records:
        return np.zeros((0, FEATURES), dtype=np.float32)
    cfg = backbone_weights(weights_cfg)
    items = [(r.image_url, r.source) for r in records]
    remote = ray.remote(num_cpus=1)(_embed_chunk)
    store_ref, cfg_ref = ray.put(store), ray.put(cfg)
    refs = [remote.remote(items[i:i + chunk], store_ref, cfg_ref, size) for i in range(0, len(items), chunk)]
    parts = ray.get(refs)
    errors = [e for _, errs in parts for e in errs]
    if errors:
        if getattr(store, "bad_images", "error") != "skip":
            more = f" (and {len(errors) - 1} more unreadable images)" if len(errors) > 1 else ""
            raise DataError(errors[0] + more)
        log.warning("label check: %d unreadable images left out (bad_images: skip), the first: %s",
                    len(errors), errors[0])
    return np.concatenate([f for f, _ in parts])


# ------------------------------------------------------------------------------------------------ label issues

def find_label_issues(task: str, records: list, classes: list[str], features: np.ndarray, *, folds: int = 5,
                      seed: int = 0, warnings: list[str] | None = None) -> list[dict]:
    """Likely label errors, worst first.

    Args:
        task: ``image_classification`` (``record.label`` a class name) or ``image_classification_multilabel``
            (``record.label`` a tuple of class names).
        records: the records ``features`` were computed from, in the same order.
        classes: the class names; ``given`` and ``suggested`` are named from it.
        features: (N, D) from :func:`embed`; rows with NaN (unreadable images) are left out.
        folds: cross-validation folds of the out-of-fold probabilities. Reduced to the smallest class's image
            count (at least 2); a class with a single image cannot be scored by a model that never saw it, so its
            image is left out of the check.
        seed: the fold split's seed.
        warnings: where given, each image or class left out is said here, one line each.

    Returns:
        One dict per flagged image: ``image_url``, ``line`` (the record's ``file:line``), ``given``, ``suggested``
        (class names; lists of names for multi-label, the suggestion being the classes the model gives 0.5 or more)
        and ``score``, the label-quality score in [0, 1], lower is more likely wrong: the probability the model
        gives the given label (multi-label: cleanlab's aggregate of each class's, the worst weighing most).
    """
    one = SINGLE_LABEL.get(task)
    if one is None:
        raise VisionsweepError(f"the label check is for {MULTICLASS} and {MULTILABEL}, but the task is {task}")
    if len(records) != len(features):
        raise VisionsweepError(f"the label check got {len(records)} records but {len(features)} feature rows")
    notes: list[str] = [] if warnings is None else warnings
    index = {c: k for k, c in enumerate(classes)}
    labels = [_label_indices(one, r, index) for r in records]
    keep = np.isfinite(features).all(axis=1) if len(features) else np.zeros(0, dtype=bool)
    if not keep.all():
        n = int((~keep).sum())
        notes.append(f"label check: {n} unreadable image{'s' if n > 1 else ''} left out")
    if one:
        counts = np.bincount([lab for lab, k in zip(labels, keep) if k], minlength=len(classes))
        single = [classes[k] for k in np.flatnonzero(counts == 1)]
        if single:
            notes.append(f"label check: classes with a single image are not checked: {', '.join(single)}")
            keep &= np.array([counts[lab] >= 2 for lab in labels], dtype=bool)
    rows = np.flatnonzero(keep)
    if one and len({labels[i] for i in rows}) < 2:
        notes.append("label check: fewer than 2 classes with 2 or more images: nothing to check")
        return []
    if len(rows) < 2 * MIN_FOLDS:
        notes.append(f"label check: {len(rows)} images are too few to check")
        return []
    x = features[rows].astype(np.float64)
    if one:
        y = np.array([labels[i] for i in rows])
        n_folds = _folds(folds, int(np.bincount(y)[np.unique(y)].min()), notes)
        probs = _out_of_fold_multiclass(x, y, len(classes), n_folds, seed)
        found, scores = _ranked_multiclass(y, probs)
    else:
        given = [labels[i] for i in rows]
        n_folds = _folds(folds, len(rows), notes, "the check has")
        probs = _out_of_fold_multilabel(x, given, len(classes), n_folds, seed)
        found, scores = _ranked_multilabel(given, probs)
    out = []
    for j in found:
        r = records[rows[j]]
        if one:
            given_name: Any = classes[y[j]]
            suggested: Any = classes[int(np.argmax(probs[j]))]
        else:
            given_name = [classes[k] for k in labels[rows[j]]]
            order = np.argsort(-probs[j])
            suggested = [classes[k] for k in order if probs[j, k] >= 0.5] or [classes[int(order[0])]]
        out.append({"image_url": r.image_url, "line": r.source, "given": given_name, "suggested": suggested,
                    "score": round(float(scores[j]), 6)})
    return out


def _label_indices(single: bool, record, index: dict[str, int]):
    names = [record.label] if single else list(record.label)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{record.source}: label {unknown[0]!r} is not one of the classes ({', '.join(index)})")
    ks = [index[n] for n in names]
    return ks[0] if single else sorted(ks)


def _folds(wanted: int, smallest: int, notes: list[str], what: str = "the smallest class has") -> int:
    n = max(MIN_FOLDS, min(int(wanted), smallest))
    if n < wanted:
        notes.append(f"label check: {n} folds instead of {wanted}: {what} {smallest} images")
    return n


# How many images are flagged is cleanlab's estimate of the noise, and the linear probe's honest confusions (shirt
# against T-shirt) count in it: the flags are as precise as the probe is accurate. Measured on the bundled
# Fashion-MNIST sample with 5 % of the labels flipped, 10 flip seeds (tests/test_data_check_labels.py): at 128 px the
# probe is 81 % accurate and cleanlab's default filter flags 3.0-3.7 times the flipped labels; at 224 px (84 %),
# strongly regularised, with ``both`` (an image is flagged only when the per-class and the noise-rate pruning
# agree), 1.7-2.6 times, finding 65-90 % of them.
PROBE_C = 0.03  # inverse L2 strength: 1280 features against a few hundred images per fold
FILTER_BY = "both"


def _probe():
    """The linear model: logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))


def _out_of_fold_multiclass(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """(N, n_classes) probabilities, each row from a model trained on the other folds; classes no image of the
    check has get probability 0 (cleanlab wants one column per class)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    present = np.unique(y)
    local = np.searchsorted(present, y)  # classes renumbered 0..k-1 for sklearn
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    p = cross_val_predict(_probe(), x, local, cv=cv, method="predict_proba")
    probs = np.zeros((len(y), n_classes))
    probs[:, present] = p
    return probs


def _out_of_fold_multilabel(x: np.ndarray, given: list[list[int]], n_classes: int, folds: int,
                            seed: int) -> np.ndarray:
    """(N, n_classes) one-vs-rest probabilities (each class present or not, independently), out of fold."""
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    onehot = np.zeros((len(given), n_classes), dtype=int)
    for i, ks in enumerate(given):
        onehot[i, ks] = 1
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(OneVsRestClassifier(_probe()), x, onehot, cv=cv, method="predict_proba")


def _ranked_multiclass(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    found = cleanlab_find(y, probs, return_indices_ranked_by="self_confidence",
                          filter_by=FILTER_BY, n_jobs=1)
    return np.asarray(found, dtype=int), get_label_quality_scores(y, probs, method="self_confidence")


def _ranked_multilabel(given: list[list[int]], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.multilabel_classification import get_label_quality_scores

    found = cleanlab_find(given, probs, multi_label=True, return_indices_ranked_by="self_confidence",
                          filter_by=FILTER_BY, n_jobs=1)
    return np.asarray(found, dtype=int), get_label_quality_scores(given, probs, method="self_confidence")

"""What an evaluation predicted on the validation images, kept with the checkpoint of its epoch.

The sweep report shows what the best model gets right and wrong (``scheduler.predictions``: a confusion matrix, the
most confident mistakes, drawn detections). The best trial computed exactly those predictions when it evaluated the
epoch it keeps as best; predicting the validation images again after the sweep costs a second inference pass on the
controller's CPU, and importing the model stack (torch, torchvision, the tasks) there costs seconds more. So each
evaluation's per-image outputs go into the checkpoint written for it (:data:`FILE`, beside ``model.safetensors``;
with data parallelism every worker holds the gathered set and rank 0, the one that writes checkpoints, writes it),
``best/`` keeps them (``trainers.package.copy_package``), and the report reads them instead of loading the model.

Kept small and bounded, only what the report draws (a compressed ``.npz`` of plain arrays, no pickle):

* classification: the probabilities (float32, one row per image, in validation order) and targets of the first
  :data:`MAX_IMAGES` validation images, the images the report's confusion matrix counts;
* detection and instance segmentation: the :data:`SAMPLES_SHOWN` images the report draws (:func:`sample_indices`),
  each with its detections at or above ``box_score_threshold`` (pixel boxes, 1-based labels, scores), its size
  and, for instance segmentation, each instance's mask as a COCO RLE string (the binarised mask the metric uses).

Every file names the validation position and URL of each image it holds, so a reader can tell that it belongs to
the run folder's ``data/valid.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

FILE = "validation_outputs.npz"
MAX_IMAGES = 500  # classification: the images the report's confusion matrix counts
SAMPLES_SHOWN = 6  # detection / segmentation: the images the report draws
CLASSIFICATION, DETECTION = "classification", "detection"
REQUIRED = ("kind", "indices", "image_urls", "epoch", "classes", "task", "page")


def sample_indices(n: int, shown: int = SAMPLES_SHOWN) -> list[int]:
    """Up to ``shown`` positions spread evenly over a set of ``n`` images, the first and the last included: the
    detection images the report draws (the same whether they come from the evaluation or a fresh prediction)."""
    return sorted({round(i * (n - 1) / max(1, shown - 1)) for i in range(min(n, shown))})


def classification_outputs(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The kept part of a classification evaluation: ``probabilities`` (n, C) and ``targets`` (n,) class indices or
    (n, C) multi-hot, both in validation order."""
    k = min(len(probabilities), MAX_IMAGES)
    return {"kind": np.array(CLASSIFICATION), "indices": np.arange(k, dtype=np.int64),
            "probabilities": np.asarray(probabilities[:k], dtype=np.float32), "targets": np.asarray(targets[:k])}


def detection_outputs(preds: Sequence[dict[str, Any]], sizes: Sequence[tuple[int, int]], threshold: float,
                      segmentation: bool) -> dict[str, np.ndarray]:
    """The kept part of a detection evaluation: ``preds[i]`` (``boxes`` xyxy pixels, ``labels`` 1-based, ``scores``
    and, with ``segmentation``, ``masks`` as COCO RLE dicts) and ``sizes[i]`` (height, width) of validation image
    ``i``; only the images of :func:`sample_indices`, only detections scoring at least ``threshold``."""
    picks = sample_indices(len(preds))
    boxes, labels, scores, counts, rles = [], [], [], [], []
    for i in picks:
        p = preds[i]
        keep = np.asarray(p["scores"]) >= threshold
        boxes.append(np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4)[keep])
        labels.append(np.asarray(p["labels"], dtype=np.int64)[keep])
        scores.append(np.asarray(p["scores"], dtype=np.float32)[keep])
        counts.append(int(keep.sum()))
        if segmentation:
            rles += [_rle_text(m) for m, k in zip(p["masks"], keep.tolist()) if k]
    out = {"kind": np.array(DETECTION), "indices": np.asarray(picks, dtype=np.int64),
           "sizes": np.asarray([sizes[i] for i in picks], dtype=np.int64).reshape(-1, 2),
           "counts": np.asarray(counts, dtype=np.int64),
           "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
           "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
           "scores": np.concatenate(scores) if scores else np.zeros(0, np.float32)}
    if segmentation:
        out["masks_rle"] = np.asarray(rles, dtype=str)
    return out


def _rle_text(rle: dict[str, Any]) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def write_outputs(folder: str | Path, outputs: dict[str, np.ndarray], image_urls: Sequence[str], epoch: int,
                  classes: Sequence[str], task: str, page: str) -> Path:
    """``folder/FILE``: ``outputs`` (:func:`classification_outputs` or :func:`detection_outputs`) with the URLs of
    its images (``image_urls``: the whole validation set's, in order), the epoch, the class names, the ``task:``
    literal and the report's page for it (``Task.report_predictions``: the report needs no task module)."""
    idx = outputs["indices"]
    path = Path(folder) / FILE
    np.savez_compressed(path, **outputs, epoch=np.array(int(epoch)), classes=np.asarray(list(classes), dtype=str),
                        image_urls=np.asarray([image_urls[int(i)] for i in idx], dtype=str),
                        task=np.array(str(task)), page=np.array(str(page)))
    return path


def read_outputs(folder: str | Path) -> dict[str, np.ndarray] | None:
    """``folder/FILE`` as arrays, or None when the folder has none (a checkpoint written before evaluations kept
    their outputs). A file that is there but unreadable is an error naming it."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a file of validation outputs this version reads ({e})") from None
    missing = set(REQUIRED) - set(out)
    if missing:
        raise ValueError(f"{path}: expected the arrays {', '.join(REQUIRED)}; {', '.join(sorted(missing))} missing")
    return out

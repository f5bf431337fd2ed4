"""A model package scored on a labelled set that no trial saw: what the demo and ``bench/model_quality.py`` print.

A sweep ranks its trials on the validation set it selected them with, so the best trial's validation metric is
optimistic. A held-out set (an MLTable or JSONL of the job's format) answers "what will this model do on new
images": accuracy for classification, mean average precision for detection and instance segmentation.

Detection is scored through the trainer's own evaluation (``DetectionTask.evaluate``: every detection down to the
AP floor ranked, as COCO evaluation does, not only those above ``box_score_threshold``), so a held-out mAP means
what a trial's validation mAP means. Images are read as the trials read them (local paths, ``az://``, ``s3://``).
"""

from __future__ import annotations

from typing import Any

CLASSIFICATION_METRIC = "accuracy"
DETECTION_METRIC = "mean_average_precision"


def score_package(package: str, data: str, target_column: str = "label", *, metric_type: str = "voc",
                  batch_size: int = 8) -> dict[str, Any]:
    """Metrics of ``package`` on the labelled set ``data``: ``{"images": n, "accuracy": ...}`` for multi-class
    classification, ``{"images": n, "mean_average_precision": ..., ...}`` (``metric_type``: voc, coco or
    coco_voc, at IoU 0.5) for the box tasks."""
    from serving.predictor import Predictor
    from trainers.data import load_records

    predictor = Predictor(package, device="cpu")
    task = predictor.pkg.task
    records = load_records(data, task, target_column)
    if not records:
        raise ValueError(f"{data}: no labelled images to score {package} on")
    score = SCORES.get(predictor.task.holdout_score or "")
    if score is None:
        raise ValueError(f"{package}: held-out scoring covers multi-class classification and the box tasks, "
                         f"not {task}")
    return score(predictor, records, metric_type, batch_size)


def _accuracy(predictor, records, metric_type: str, batch_size: int) -> dict[str, Any]:
    from trainers.data.images import read_image

    hits = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        for r, resp in zip(chunk, predictor.predict_images([read_image(r.image_url) for r in chunk])):
            best = max(range(len(resp["probs"])), key=resp["probs"].__getitem__)
            hits += resp["labels"][best] == r.label
    return {"images": len(records), CLASSIFICATION_METRIC: hits / len(records), "correct": hits}


def _box_metrics(predictor, records, metric_type: str, batch_size: int) -> dict[str, Any]:
    from trainers.data.images import read_image
    from trainers.tasks.detection import DetectionSample
    from trainers.workers import Runtime

    sample = DetectionSample(predictor.task, train=False)
    batches = []
    for start in range(0, len(records), batch_size):
        images, targets = [], []
        for r in records[start:start + batch_size]:
            image, target = sample(read_image(r.image_url), r, 0)
            images.append(image)
            targets.append(target)
        batches.append((images, targets))
    h = {**predictor.pkg.settings, "validation_metric_type": metric_type, "validation_iou_threshold": 0.5,
         "log_validation_loss": False}
    out = predictor.task.evaluate(predictor.pkg.model, batches, Runtime(predictor.device), h)
    out["images"] = out.pop("validation_images", len(records))
    return out


# how a package is scored, by the name its task gives (``Task.holdout_score``)
SCORES = {"accuracy": _accuracy, "boxes": _box_metrics}

"""Validation metrics of object detection and instance segmentation, computed by a COCO evaluator.

The numbers come from faster-coco-eval (C++ port of the COCO API); pycocotools is the fallback when
it cannot be imported. Nothing here computes AP by hand: this module only converts the validation
images to in-memory COCO datasets, sets the evaluator's parameters and reads its results.

``metric_type`` (SPEC ``validation_metric_type``) and ``iou_threshold`` (``validation_iou_threshold``):

* ``voc``: ``mean_average_precision`` is the AP at IoU = ``iou_threshold``: COCO-style 101-point
  interpolated AP (``params.iouThrs = [iou_threshold]``, area range "all", maxDets 100), not the
  11-point / all-point VOC2007/2012 variants.
* ``coco``: ``mean_average_precision`` is COCO's standard AP averaged over IoU 0.50:0.05:0.95, plus
  ``mean_average_precision_50`` and ``mean_average_precision_75``.
* ``coco_voc``: ``mean_average_precision`` is the ``voc`` value, ``coco_mean_average_precision`` the
  ``coco`` one.
* ``none``: ``{}``.

All three also report ``precision`` and ``recall`` at ``iou_threshold`` over every detection passed in
(the model already dropped those under its score threshold), from the evaluator's greedy matching by
score: a detection matched to a crowd ground truth is neither a TP nor an FP, crowd ground truth is
not counted in recall; and ``per_label_metrics`` ``{class: {average_precision, precision, recall}}``
for the classes with (non-crowd) ground truth (AP at ``iou_threshold`` for voc / coco_voc, at
0.50:0.95 for coco). A class without ground truth is left out of every mean, as COCO does (-1).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

try:  # the evaluator (and its mask API, a port of pycocotools' that writes the same RLEs)
    from faster_coco_eval import COCO as _FastCOCO
    from faster_coco_eval import COCOeval_faster as _FastCOCOeval
    from faster_coco_eval.core import mask as _mask_api

    _HAVE_FASTER_COCO_EVAL = True
except ImportError:  # pragma: no cover - the tests force the pycocotools path through the flag below
    from pycocotools import mask as _mask_api

    _HAVE_FASTER_COCO_EVAL = False

METRIC_TYPES = ("none", "coco", "voc", "coco_voc")
MAX_DETECTIONS = 100  # COCO's maxDets for AP (per image and class)
_COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # as COCO's Params builds them (no arange drift)
_ALL_AREAS = [[0.0, 1e5**2]]  # only COCO's "all" area range: small/medium/large are not reported


def encode_masks(masks: np.ndarray) -> list[dict]:
    """[N, H, W] bool/uint8 (or float >= 0.5) -> COCO RLE dicts.

    ``mask.encode`` of the COCO mask API (pycocotools' format; faster-coco-eval's identical port when
    installed) on Fortran-order uint8; ``counts`` as str so the dicts pickle / JSON small.
    """
    masks = _to_numpy(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if len(masks) == 0:
        return []
    if masks.dtype.kind == "f":
        binary = masks >= 0.5
    else:
        binary = masks != 0
    rles = _mask_api.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    out = []
    for rle in rles:
        counts = rle["counts"]
        out.append({"size": [int(s) for s in rle["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts})
    return out


def decode_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    """COCO RLE dicts -> [N, H, W] uint8 masks (the inverse of :func:`encode_masks`)."""
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    enc = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
           for r in rles]
    return np.ascontiguousarray(_mask_api.decode(enc).transpose(2, 0, 1)).astype(np.uint8)


def detection_metrics(predictions: list[dict], targets: list[dict], classes: list[str], *,
                      metric_type: str = "voc", iou_threshold: float = 0.5,
                      segmentation: bool = False) -> dict[str, Any]:
    """Validation metrics of one epoch; ``predictions[i]`` and ``targets[i]`` are the same image.

    ``targets[i]``: ``boxes`` [N, 4] xyxy pixels, ``labels`` [N] 1-based (``classes[l - 1]``),
    ``iscrowd`` [N], ``size`` (height, width) and, for ``segmentation``, ``masks`` (N RLE dicts).
    ``predictions[i]``: ``boxes`` [M, 4], ``labels`` [M], ``scores`` [M] and, for ``segmentation``,
    ``masks`` (M RLE dicts). numpy arrays or torch tensors.

    AP is the evaluator's COCO 101-point interpolated AP (area range "all", maxDets 100); for ``voc``
    it is taken at IoU = ``iou_threshold`` only (``params.iouThrs = [iou_threshold]``). See the module
    docstring for the keys of each ``metric_type``. ``segmentation=True`` scores mask IoU ("segm")
    instead of box IoU.
    """
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"metric_type must be one of {METRIC_TYPES}, got {metric_type!r}")
    if metric_type == "none":
        return {}
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets (one each per image)")

    gt, dt, crowd_gt_ids, max_per_image_class = _coco_datasets(predictions, targets, classes, segmentation)
    iou_type = "segm" if segmentation else "bbox"
    class_ids = list(range(1, len(classes) + 1))
    n_gt = {c: 0 for c in class_ids}  # non-crowd ground truth per class
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            n_gt[ann["category_id"]] += 1
    n_dt = {c: 0 for c in class_ids}
    for ann in dt["annotations"]:
        n_dt[ann["category_id"]] += 1

    # At iou_threshold: AP (voc) and the matches of every detection. maxDets gets a second, larger
    # entry when an image has more than 100 detections of a class so that precision / recall see them
    # all; the AP is still read at maxDets 100 (COCO matches greedily by score, so the first 100
    # matches do not depend on the later detections).
    max_dets = [MAX_DETECTIONS] + ([max_per_image_class] if max_per_image_class > MAX_DETECTIONS else [])
    ap_thr, matches = _evaluate(gt, dt, iou_type, [float(iou_threshold)], max_dets)
    ap_thr = ap_thr[0]  # [R, K] at maxDets 100

    tp = {c: 0 for c in class_ids}
    ignored = {c: 0 for c in class_ids}  # detections matched to a crowd region
    category_of_dt = {ann["id"]: ann["category_id"] for ann in dt["annotations"]}
    for dt_id, gt_id in matches:
        (ignored if gt_id in crowd_gt_ids else tp)[category_of_dt[dt_id]] += 1

    def precision_recall(cs):
        t = sum(tp[c] for c in cs)
        scored = sum(n_dt[c] - ignored[c] for c in cs)  # TP + FP
        g = sum(n_gt[c] for c in cs)
        return (t / scored if scored else 0.0), (t / g if g else 0.0)

    present = [c for c in class_ids if n_gt[c] > 0]
    per_class_ap = {c: _mean_ap(ap_thr[None, :, k]) for k, c in enumerate(class_ids)}
    out: dict[str, Any] = {}
    if metric_type in ("coco", "coco_voc"):
        ap_coco, _ = _evaluate(gt, dt, iou_type, list(_COCO_IOU_THRESHOLDS), [MAX_DETECTIONS])  # [T, R, K]
        coco_map = _mean_ap(ap_coco)
        if metric_type == "coco":
            per_class_ap = {c: _mean_ap(ap_coco[:, :, k]) for k, c in enumerate(class_ids)}
            out["mean_average_precision"] = coco_map
            out["mean_average_precision_50"] = _mean_ap(ap_coco[np.isclose(_COCO_IOU_THRESHOLDS, 0.5)])
            out["mean_average_precision_75"] = _mean_ap(ap_coco[np.isclose(_COCO_IOU_THRESHOLDS, 0.75)])
        else:
            out["mean_average_precision"] = _mean_ap(ap_thr[None])
            out["coco_mean_average_precision"] = coco_map
    else:
        out["mean_average_precision"] = _mean_ap(ap_thr[None])
    out["precision"], out["recall"] = (float(v) for v in precision_recall(class_ids))
    per_label = {}
    for c in present:
        p, r = precision_recall([c])
        per_label[classes[c - 1]] = {"average_precision": per_class_ap[c], "precision": float(p),
                                     "recall": float(r)}
    out["per_label_metrics"] = per_label
    return out


def _mean_ap(precision: np.ndarray) -> float:
    """Mean of COCO's interpolated precisions [T, R, K...], -1 (class without ground truth) left out;
    0.0 when nothing is left (no ground truth at all)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def _to_numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _coco_datasets(predictions, targets, classes, segmentation):
    """The ground truth and detections as COCO dataset dicts (image i -> id i + 1; annotation ids from 1,
    as 0 means "unmatched" in the evaluator), the ids of the crowd ground truth, and the most detections
    of one class in one image."""
    categories = [{"id": i + 1, "name": str(name)} for i, name in enumerate(classes)]
    images, gt_anns, dt_anns = [], [], []
    crowd_ids: set[int] = set()
    max_per_image_class = 0
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        image_id = i + 1
        height, width = target.get("size") or _size_from_masks(target, pred)
        images.append({"id": image_id, "height": int(height), "width": int(width)})

        anns = _entry_annotations(target, f"targets[{i}]", image_id, len(gt_anns) + 1, len(classes), segmentation,
                                  iscrowd=("iscrowd flags", lambda n: target.get("iscrowd", np.zeros(n)), int))
        crowd_ids.update(a["id"] for a in anns if a["iscrowd"])
        gt_anns += anns
        anns = _entry_annotations(pred, f"predictions[{i}]", image_id, len(dt_anns) + 1, len(classes), segmentation,
                                  score=("scores", lambda n: pred.get("scores", np.zeros(0)), float),
                                  iscrowd=("", lambda n: np.zeros(n), int))
        dt_anns += anns
        if anns:
            per_class = np.bincount([a["category_id"] for a in anns])
            max_per_image_class = max(max_per_image_class, int(per_class.max()))
    gt = {"images": images, "categories": categories, "annotations": gt_anns}
    dt = {"images": images, "categories": categories, "annotations": dt_anns}
    return gt, dt, crowd_ids, max_per_image_class


def _entry_annotations(entry, where: str, image_id: int, first_id: int, n_classes: int, segmentation: bool,
                       **fields) -> list[dict]:
    """One image's boxes (and masks) of a target or a prediction as COCO annotations with ids from ``first_id``;
    ``fields``: name -> (what it is, for errors; its per-box values given the box count; the type of each value)."""
    boxes, labels = _boxes_labels(entry, where, n_classes)
    values = {}
    for name, (what, get, kind) in fields.items():
        v = _to_numpy(get(len(labels)), np.float64).reshape(-1)
        if len(v) != len(labels):
            raise ValueError(f"{where}: {len(v)} {what} for {len(labels)} boxes")
        values[name] = v
    masks = _masks(entry, where, len(labels)) if segmentation else None
    out = []
    for j in range(len(labels)):
        ann = _annotation(first_id + j, image_id, labels[j], boxes[j], masks[j] if masks else None)
        ann.update({name: fields[name][2](v[j]) for name, v in values.items()})
        out.append(ann)
    return out


def _size_from_masks(target, pred):
    for entry in (target, pred):
        for rle in entry.get("masks") or []:
            return rle["size"]
    return (0, 0)  # boxes only: the evaluator does not use the image size


def _boxes_labels(entry, where, n_classes):
    labels = _to_numpy(entry.get("labels", np.zeros(0)), np.int64).reshape(-1)
    boxes = _to_numpy(entry.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    if len(boxes) != len(labels):
        raise ValueError(f"{where}: {len(boxes)} boxes for {len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > n_classes):
        raise ValueError(f"{where}: labels must be 1..{n_classes} (1-based class indices), got {labels.tolist()}")
    return boxes, labels


def _masks(entry, where, n):
    masks = entry.get("masks")
    masks = [] if masks is None else list(masks)
    if len(masks) != n:
        raise ValueError(f"{where}: {len(masks)} masks for {n} boxes (segmentation needs one RLE per box)")
    return masks


def _annotation(ann_id, image_id, label, box, rle):
    x1, y1, x2, y2 = (float(v) for v in box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": int(label),
           "bbox": [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]}
    if rle is None:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    else:
        ann["segmentation"] = rle
        ann["area"] = float(_mask_api.area(rle))
    return ann


def _evaluate(gt: dict, dt: dict, iou_type: str, iou_thresholds: list[float], max_dets: list[int]):
    """Run the evaluator; returns COCO's interpolated precision [T, R, K] at maxDets 100 (area "all";
    -1 where a class has no ground truth) and the (detection id, ground truth id) pairs it matched at
    the (single) IoU threshold, crowd matches included."""
    if _HAVE_FASTER_COCO_EVAL:
        return _evaluate_faster(gt, dt, iou_type, iou_thresholds, max_dets)
    return _evaluate_pycocotools(gt, dt, iou_type, iou_thresholds, max_dets)


def _set_params(params, iou_thresholds, max_dets, n_images, n_classes):
    params.imgIds = list(range(1, n_images + 1))
    params.catIds = list(range(1, n_classes + 1))
    params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
    params.maxDets = list(max_dets)
    params.areaRng = [list(a) for a in _ALL_AREAS]
    params.areaRngLbl = ["all"]


def _quiet(*args, **kwargs):
    pass


def _evaluate_faster(gt, dt, iou_type, iou_thresholds, max_dets):
    # faster-coco-eval does not expose COCO's per-image evalImgs (its ImageEvaluation objects are opaque
    # C++); eval["matched"] is the list its greedy matcher built ("<dt id>_<gt id>" -> IoU), over every
    # IoU threshold and area range of the run: with one threshold and one range it is exactly
    # COCO's dtMatches (crowd matches, i.e. dtIgnore, included).
    coco_gt = _FastCOCO(gt, print_function=_quiet)
    coco_dt = _FastCOCO(dt, print_function=_quiet)
    ev = _FastCOCOeval(coco_gt, coco_dt, iou_type, print_function=_quiet)
    _set_params(ev.params, iou_thresholds, max_dets, len(gt["images"]), len(gt["categories"]))
    if ev.params.imgIds and ev.params.catIds:
        ev.evaluate()
        ev.accumulate()
        precision = np.asarray(ev.eval["precision"])[:, :, :, 0, max_dets.index(MAX_DETECTIONS)]
        matched = ev.eval.get("matched")
        if matched is None:  # pragma: no cover - every faster-coco-eval this project allows returns it
            raise RuntimeError("faster-coco-eval returned no 'matched' detections; upgrade it (>= 1.6)")
        pairs = [tuple(int(x) for x in key.split("_", 1)) for key in matched] if len(iou_thresholds) == 1 else []
    else:  # no image or no class: nothing to evaluate
        precision = -np.ones((len(iou_thresholds), 101, len(gt["categories"])))
        pairs = []
    return precision, pairs


def _evaluate_pycocotools(gt, dt, iou_type, iou_thresholds, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress unconditionally
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        _set_params(ev.params, iou_thresholds, max_dets, len(gt["images"]), len(gt["categories"]))
        if not (ev.params.imgIds and ev.params.catIds):
            return -np.ones((len(iou_thresholds), 101, len(gt["categories"]))), []
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, max_dets.index(MAX_DETECTIONS)]
    pairs = []
    if len(iou_thresholds) == 1:
        for e in ev.evalImgs:  # one per (class, area range "all", image); None when both are empty
            if e is None:
                continue
            for dt_id, gt_id in zip(e["dtIds"], e["dtMatches"][0]):
                if gt_id:
                    pairs.append((int(dt_id), int(gt_id)))
    return precision, pairs

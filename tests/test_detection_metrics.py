"""Validation metrics of object detection / instance segmentation (trainers.detection_metrics).

Every expected value is computed by hand. COCO's AP is the mean, over the 101 recall thresholds
0, 0.01, ..., 1, of the best precision reached at a recall >= that threshold (0 past the last recall
reached). So a class whose detections reach recall 0.5 at precision 1 has AP 51/101 (thresholds
0..0.50), not 0.5. Each test runs once on faster-coco-eval and once on the pycocotools fallback;
AP is compared with pytest.approx because pycocotools divides by tp + fp + eps (1.0 -> 0.9999999999999999).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainers.detection_metrics as dm
from trainers.detection_metrics import detection_metrics, encode_masks

approx = pytest.approx
CLASSES = ["cat", "dog", "bird"]
HALF_RECALL_AP = 51 / 101  # precision 1 up to recall 0.5, nothing beyond


@pytest.fixture(autouse=True, params=["faster_coco_eval", "pycocotools"])
def evaluator(request, monkeypatch):
    if request.param == "pycocotools":
        pytest.importorskip("pycocotools")
        monkeypatch.setattr(dm, "_HAVE_FASTER_COCO_EVAL", False)
    elif not dm._HAVE_FASTER_COCO_EVAL:
        pytest.skip("faster-coco-eval is not installed")
    return request.param


def target(boxes=(), labels=(), iscrowd=None, size=(100, 100), masks=None):
    t = {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64),
         "iscrowd": np.zeros(len(labels), bool) if iscrowd is None else np.asarray(iscrowd, bool), "size": size}
    if masks is not None:
        t["masks"] = masks
    return t


def pred(boxes=(), labels=(), scores=None, masks=None):
    p = {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64),
         "scores": np.asarray([0.9] * len(labels) if scores is None else scores, dtype=np.float32)}
    if masks is not None:
        p["masks"] = masks
    return p


def metrics(preds, targets, **kw):
    return detection_metrics(preds, targets, CLASSES, **kw)


A = [10, 10, 30, 30]  # 20x20 boxes
B = [50, 50, 70, 80]
C = [0, 60, 10, 90]


def test_perfect_predictions_score_one_everywhere():
    targets = [target([A, B], [1, 2]), target([C], [1])]
    preds = [pred([A, B], [1, 2], [0.9, 0.8]), pred([C], [1], [0.7])]
    voc = metrics(preds, targets, metric_type="voc")
    assert voc == {"mean_average_precision": approx(1.0), "precision": 1.0, "recall": 1.0, "per_label_metrics": {
        "cat": approx({"average_precision": 1.0, "precision": 1.0, "recall": 1.0}),
        "dog": approx({"average_precision": 1.0, "precision": 1.0, "recall": 1.0})}}  # bird: no ground truth
    coco = metrics(preds, targets, metric_type="coco")
    assert coco["mean_average_precision"] == coco["mean_average_precision_50"] == approx(1.0)
    assert coco["mean_average_precision_75"] == approx(1.0)
    assert (coco["precision"], coco["recall"]) == (1.0, 1.0)
    both = metrics(preds, targets, metric_type="coco_voc")
    assert set(both) == {"mean_average_precision", "coco_mean_average_precision", "precision", "recall",
                         "per_label_metrics"}
    assert both["mean_average_precision"] == both["coco_mean_average_precision"] == approx(1.0)
    for m in (voc, coco, both):
        assert all(type(v) is float for v in m.values() if not isinstance(v, dict))
        assert all(type(v) is float for per in m["per_label_metrics"].values() for v in per.values())


def test_none_computes_nothing():
    assert metrics([pred([A], [1])], [target([A], [1])], metric_type="none") == {}


def test_unknown_metric_type_is_refused():
    with pytest.raises(ValueError, match="metric_type"):
        metrics([pred()], [target()], metric_type="map")


# GT 0..10 x 0..10 (area 100); prediction 0..10 x 0..6: intersection 60, union 100 -> IoU exactly 0.6.
GT_SQUARE = [0, 0, 10, 10]
SHIFTED = [0, 0, 10, 6]


def test_a_box_counts_when_its_iou_reaches_the_threshold():
    preds, targets = [pred([SHIFTED], [1])], [target([GT_SQUARE], [1])]
    assert metrics(preds, targets, iou_threshold=0.5)["mean_average_precision"] == approx(1.0)
    assert metrics(preds, targets, iou_threshold=0.6)["mean_average_precision"] == approx(1.0)  # IoU >= threshold
    at_07 = metrics(preds, targets, iou_threshold=0.7)
    assert at_07["mean_average_precision"] == 0.0
    assert (at_07["precision"], at_07["recall"]) == (0.0, 0.0)  # the detection is a FP, the GT missed


def test_coco_ap_is_the_fraction_of_the_ten_iou_thresholds_passed():
    preds, targets = [pred([SHIFTED], [1])], [target([GT_SQUARE], [1])]
    coco = metrics(preds, targets, metric_type="coco")
    # IoU 0.6 >= 0.50, 0.55, 0.60 (np.linspace gives exactly 0.6 there), < 0.65 ... 0.95: AP 1 at 3 of 10
    assert coco["mean_average_precision"] == approx(3 / 10)
    assert coco["mean_average_precision_50"] == approx(1.0)
    assert coco["mean_average_precision_75"] == 0.0
    assert coco["per_label_metrics"]["cat"]["average_precision"] == approx(3 / 10)
    assert (coco["precision"], coco["recall"]) == (1.0, 1.0)  # at iou_threshold 0.5
    both = metrics(preds, targets, metric_type="coco_voc", iou_threshold=0.5)
    assert both["mean_average_precision"] == approx(1.0)
    assert both["coco_mean_average_precision"] == approx(3 / 10)


def test_a_missed_box_halves_recall():
    preds, targets = [pred([A], [1])], [target([A, B], [1, 1])]
    m = metrics(preds, targets)
    assert (m["precision"], m["recall"]) == (1.0, 0.5)
    assert m["mean_average_precision"] == approx(HALF_RECALL_AP)  # 0.50495...


def test_a_duplicate_prediction_is_a_false_positive():
    preds, targets = [pred([A, A], [1, 1], [0.9, 0.8])], [target([A], [1])]
    m = metrics(preds, targets)
    assert (m["precision"], m["recall"]) == (0.5, 1.0)
    assert m["mean_average_precision"] == approx(1.0)  # the FP ranks after the TP: recall 1 at precision 1


CROWD = [40, 40, 90, 90]
IN_CROWD = [45, 45, 65, 65]  # inside the crowd region: IoU with it (crowd rule: / own area) = 1


def test_a_prediction_on_a_crowd_region_is_neither_tp_nor_fp():
    targets = [target([A, CROWD], [1, 1], iscrowd=[0, 1])]
    preds = [pred([A, IN_CROWD], [1, 1], [0.9, 0.95])]
    m = metrics(preds, targets)
    assert (m["precision"], m["recall"]) == (1.0, 1.0)  # not 0.5: the crowd match is ignored
    assert m["mean_average_precision"] == approx(1.0)  # despite the higher score of the crowd match
    # the same region without the crowd flag: a GT of its own (IoU 400/2500 -> missed), the prediction a FP
    plain = metrics(preds, [target([A, CROWD], [1, 1])])
    assert (plain["precision"], plain["recall"]) == (0.5, 0.5)


def test_crowd_ground_truth_is_not_counted_in_recall():
    m = metrics([pred([A], [1])], [target([A, CROWD], [1, 1], iscrowd=[0, 1])])
    assert (m["precision"], m["recall"], m["mean_average_precision"]) == approx((1.0, 1.0, 1.0))
    only_crowd = metrics([pred([IN_CROWD], [2])], [target([A, CROWD], [1, 2], iscrowd=[0, 1])])
    assert set(only_crowd["per_label_metrics"]) == {"cat"}  # a class with crowd GT only has no AP


def test_a_false_positive_on_an_image_without_ground_truth_lowers_precision():
    targets = [target([A], [1]), target()]
    low = metrics([pred([A], [1], [0.9]), pred([B], [1], [0.5])], targets)
    assert (low["precision"], low["recall"], low["mean_average_precision"]) == approx((0.5, 1.0, 1.0))
    # ranked first, the FP also costs AP: precision 0.5 at the only recall reached (1.0)
    high = metrics([pred([A], [1], [0.5]), pred([B], [1], [0.9])], targets)
    assert (high["precision"], high["recall"]) == (0.5, 1.0)
    assert high["mean_average_precision"] == approx(0.5)


def test_per_class_metrics_and_classes_without_ground_truth():
    targets = [target([A, B], [1, 2]), target([C], [2])]
    # cat perfect; dog 1 of 2 found; a bird FP (bird has no ground truth anywhere)
    preds = [pred([A, B, C], [1, 2, 3], [0.9, 0.8, 0.7]), pred()]
    m = metrics(preds, targets)
    assert m["per_label_metrics"] == {
        "cat": approx({"average_precision": 1.0, "precision": 1.0, "recall": 1.0}),
        "dog": approx({"average_precision": HALF_RECALL_AP, "precision": 1.0, "recall": 0.5}),
    }
    assert m["mean_average_precision"] == approx((1.0 + HALF_RECALL_AP) / 2)  # bird left out
    assert m["precision"] == approx(2 / 3)  # 2 TP, 1 FP (the bird)
    assert m["recall"] == approx(2 / 3)  # 2 of 3 GT


def test_no_predictions_at_all_score_zero():
    targets = [target([A], [1]), target(), target([B, C], [2, 1])]
    for metric_type in ("voc", "coco", "coco_voc"):
        m = metrics([pred(), pred(), pred()], targets, metric_type=metric_type)
        assert all(v == 0.0 for k, v in m.items() if k != "per_label_metrics"), m
        assert m["per_label_metrics"] == {name: {"average_precision": 0.0, "precision": 0.0, "recall": 0.0}
                                          for name in ("cat", "dog")}


def test_no_ground_truth_and_no_images_do_not_fail():
    m = metrics([pred([A], [1])], [target()])
    assert (m["mean_average_precision"], m["precision"], m["recall"], m["per_label_metrics"]) == (0.0, 0.0, 0.0, {})
    assert metrics([], [], metric_type="coco_voc")["coco_mean_average_precision"] == 0.0


def test_torch_tensors_are_accepted():
    t = {"boxes": torch.tensor([A, B], dtype=torch.float32), "labels": torch.tensor([1, 1]),
         "iscrowd": torch.tensor([False, False]), "size": (100, 100)}
    p = {"boxes": torch.tensor([A]), "labels": torch.tensor([1]), "scores": torch.tensor([0.8])}
    m = metrics([p], [t])
    assert (m["precision"], m["recall"]) == (1.0, 0.5)


def test_precision_and_recall_count_every_detection_past_100():
    # 150 detections of one class in one image: COCO's AP looks at the best 100, precision at all
    far = [[x, 90, x + 1, 91] for x in range(149)]
    m = metrics([pred([A] + far, [1] * 150, [0.99] + [0.5] * 149)], [target([A], [1])])
    assert m["precision"] == approx(1 / 150)
    assert (m["recall"], m["mean_average_precision"]) == approx((1.0, 1.0))


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="1..3"):
        metrics([pred([A], [0])], [target()])


def test_the_evaluator_prints_nothing(capsys):
    metrics([pred([A], [1])], [target([A, B], [1, 2])], metric_type="coco_voc")
    masks = encode_masks(rect_masks((100, 100), [A]))
    metrics([pred([A], [1], masks=masks)], [target([A], [1], masks=masks)], metric_type="coco", segmentation=True)
    assert capsys.readouterr().out == ""


# ---- segmentation ----

def rect_masks(size, boxes):
    masks = np.zeros((len(boxes), *size), dtype=bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = True
    return masks


def test_encode_masks_writes_small_string_rles():
    masks = rect_masks((20, 30), [[3, 2, 9, 5], [0, 0, 30, 20]])
    rles = encode_masks(masks)
    assert [r["size"] for r in rles] == [[20, 30], [20, 30]]
    assert all(isinstance(r["counts"], str) for r in rles)
    assert encode_masks(masks.astype(np.uint8)) == rles
    assert encode_masks(masks * np.float32(0.7) + np.float32(0.1)) == rles  # >= 0.5 is foreground
    assert encode_masks(torch.from_numpy(masks)) == rles
    assert encode_masks(np.zeros((0, 20, 30), bool)) == []
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    decoded = pycocotools_mask.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), masks)


def test_perfect_masks_score_one():
    masks = encode_masks(rect_masks((100, 100), [A, B]))
    targets = [target([A, B], [1, 2], masks=masks)]
    preds = [pred([A, B], [1, 2], masks=masks)]
    for metric_type in ("voc", "coco"):
        m = metrics(preds, targets, metric_type=metric_type, segmentation=True)
        assert (m["mean_average_precision"], m["precision"], m["recall"]) == approx((1.0, 1.0, 1.0))


def test_segmentation_is_judged_by_mask_iou_not_box_iou():
    # GT: an L (left column 2 wide + bottom row 2 high) in the 10x10 box; area 20 + 20 - 4 = 36.
    l_shape = np.zeros((1, 100, 100), bool)
    l_shape[0, 0:10, 0:2] = True
    l_shape[0, 8:10, 0:10] = True
    square = rect_masks((100, 100), [GT_SQUARE])  # predicted: the filled square, same box
    targets = [target([GT_SQUARE], [1], masks=encode_masks(l_shape))]
    preds = [pred([GT_SQUARE], [1], masks=encode_masks(square))]
    # box IoU 1.0, mask IoU 36 / 100 = 0.36 < 0.5
    assert metrics(preds, targets)["mean_average_precision"] == approx(1.0)
    seg = metrics(preds, targets, segmentation=True)
    assert (seg["mean_average_precision"], seg["precision"], seg["recall"]) == (0.0, 0.0, 0.0)
    assert metrics(preds, targets, segmentation=True, iou_threshold=0.35)["mean_average_precision"] == approx(1.0)

    # and the other way: the right mask under a wrong box (box IoU 0) is a hit
    wrong_box = [pred([[50, 50, 60, 60]], [1], masks=encode_masks(l_shape))]
    assert metrics(wrong_box, targets)["mean_average_precision"] == 0.0
    assert metrics(wrong_box, targets, segmentation=True)["mean_average_precision"] == approx(1.0)


def test_half_overlapping_mask_at_half_iou():
    # GT 20x20 square; prediction: the same square with its right half moved 10 px right ->
    # mask intersection 200, union 600 -> IoU 1/3 (its box: 30 wide, box IoU 400/600 = 2/3)
    gt = rect_masks((100, 100), [A])
    moved = rect_masks((100, 100), [[10, 10, 20, 30]]) | rect_masks((100, 100), [[30, 10, 40, 30]])
    targets = [target([A], [1], masks=encode_masks(gt))]
    preds = [pred([[10, 10, 40, 30]], [1], masks=encode_masks(moved))]
    assert metrics(preds, targets)["mean_average_precision"] == approx(1.0)
    assert metrics(preds, targets, segmentation=True)["mean_average_precision"] == 0.0
    assert metrics(preds, targets, segmentation=True, iou_threshold=0.3)["mean_average_precision"] == approx(1.0)

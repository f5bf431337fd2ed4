"""The detection and segmentation tasks without Ray (SPEC §2.3, §6.5, §6.7, §7, §14): samples, targets,
augmentations, tiling in training, job-time checks, and a malformed label named by file and line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from scheduler.preflight import check_supported
from scheduler.spec import parse_job
from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.errors import DataError, SpecError, VisionsweepError
from trainers.tasks import make_task


def resolved(task, **fixed):
    return hp.resolve_hyperparameters(task, {"min_size": 64, "max_size": 64, **fixed}, {})


def test_training_targets_leave_crowds_out_and_validation_targets_keep_them(tmp_path):
    from trainers.labels import Box
    from trainers.tasks.detection import DetectionSample

    task = make_task(hp.DETECTION, ["a", "b"])
    rec = type("R", (), {"label": (Box("b", 0.1, 0.2, 0.5, 0.6), Box("a", 0.0, 0.0, 1.0, 1.0, is_crowd=True))})()
    train_t = DetectionSample(task, train=True).target(rec, 100, 50)
    assert train_t["boxes"].tolist() == [[10.0, 10.0, 50.0, 30.0]] and train_t["labels"].tolist() == [2]
    valid_t = DetectionSample(task, train=False).target(rec, 100, 50)
    assert valid_t["iscrowd"].tolist() == [0, 1] and valid_t["labels"].tolist() == [2, 1]
    assert valid_t["size"] == (50, 100)


@pytest.fixture(scope="module")
def od_data(shapes_detection):
    tr, va = shapes_detection
    return prepare_data(hp.DETECTION, "label", str(tr), str(va), 0.2, 0)


def test_without_automl_augmentations_a_sample_is_the_image_and_its_boxes(od_data):
    task = make_task(hp.DETECTION, od_data.classes)
    h = resolved(hp.DETECTION, model_name="retinanet_resnet50_fpn",
                 advanced_settings={"apply_automl_train_augmentations": False})
    ds = task.train_dataset(h, od_data)
    img, t = ds[0]
    r = od_data.train[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    (b,) = r.label
    assert t["boxes"][0].tolist() == pytest.approx([b.top_x * 64, b.top_y * 64, b.bottom_x * 64, b.bottom_y * 64])


def test_augmentations_move_boxes_with_the_image(od_data):
    """Expand, IoU crop and flip change the canvas; the boxes stay on the shape's bright pixels."""
    task = make_task(hp.DETECTION, od_data.classes)
    ds = task.train_dataset(resolved(hp.DETECTION, model_name="retinanet_resnet50_fpn"), od_data)
    torch.manual_seed(3)
    changed = 0
    for i in range(12):
        img, t = ds[i]
        changed += img.shape[-2:] != (64, 64)
        for x0, y0, x1, y1 in t["boxes"].round().int().tolist():
            inside = img[:, y0:y1, x0:x1].max(0).values
            assert (inside > 0.5).float().mean() > 0.5  # mostly the shape's colour, not the dark background
    assert changed  # some samples were expanded or cropped


def test_tiling_trains_on_the_whole_image_and_each_tile(od_data):
    task = make_task(hp.DETECTION, od_data.classes)
    h = resolved(hp.DETECTION, model_name="retinanet_resnet50_fpn", tile_grid_size="(2, 2)", tile_overlap_ratio=0.5,
                 advanced_settings={"apply_automl_train_augmentations": False})
    ds = task.train_dataset(h, od_data)
    assert len(ds) == len(od_data.train) * 5
    whole, _ = ds[0]
    tile, t = ds[4]  # the bottom-right tile of the first image
    assert whole.shape[-2:] == (64, 64) and tile.shape[-2:] == (43, 43)
    assert torch.equal(tile, whole[:, 21:, 21:])
    assert (t["boxes"][:, 2:] <= 43).all()


def test_a_tiled_detector_trains_and_validates_in_process(shapes_detection):
    from trainers.engine import train

    tr, va = shapes_detection
    data = prepare_data(hp.DETECTION, "label", str(tr), str(va), 0.2, 0)
    data.train, data.valid = data.train[:4], data.valid[:2]
    h = resolved(hp.DETECTION, model_name="retinanet_resnet50_fpn", tile_grid_size="2x1", number_of_epochs=1,
                 training_batch_size=2, validation_metric_type="voc")
    reports = []
    train(h, data, lambda m, save: reports.append(m), device="cpu")
    (m,) = reports
    assert m["validation_images"] == 2 and 0.0 <= m["mean_average_precision"] <= 1.0
    assert m["validation_loss"] > 0 and m["train_loss"] > 0  # the loss of whole validation images (§14)


BOX_BASE = """\
task: image_object_detection
target_column_name: label
training_data: {path: data/train}
"""


def box_job(extra: str):
    return parse_job(BOX_BASE + textwrap.dedent(extra), source=Path("job.yml"))


@pytest.mark.parametrize("extra,expected", [
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, min_size: 800, max_size: 600}",
     "min_size \\(800\\) must be <= max_size \\(600\\)"),
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, max_size: 500}\n"
     "limits: {max_trials: 2}\nsearch_space:\n  - min_size: {type: choice, values: [400, 600]}\n"
     "sweep: {sampling_algorithm: grid}", "min_size \\(600\\) must be <= max_size \\(500\\)"),
    ("training_parameters: {model_name: maskrcnn_resnet18_fpn, layers_to_freeze: 6}",
     "5 layer groups"),
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, validation_metric_type: none}\n"
     "limits: {max_trials: 3}", "'none' computes no mean_average_precision"),
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, tile_grid_size: 'three'}", "grid of two integers"),
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, validation_iou_threshold: 0.05}", ">= 0.1"),
    ("training_parameters: {model_name: fasterrcnn_resnet18_fpn, image_size: 320}", "does not apply to model"),
])
def test_bad_detection_settings_fail_at_job_time(extra, expected):
    if "maskrcnn" in extra:
        extra = extra + "\n"
        with pytest.raises(SpecError, match=expected):
            parse_job(BOX_BASE.replace("image_object_detection", "image_instance_segmentation") + extra,
                      source=Path("job.yml"))
        return
    with pytest.raises(SpecError, match=expected):
        box_job(extra)


def test_both_spellings_of_the_box_settings_resolve_to_the_same_job():
    v1 = box_job("training_parameters: {model_name: fasterrcnn_resnet18_fpn, box_score_thresh: 0.4, "
                 "box_nms_thresh: 0.3, box_detections_per_img: 7, tile_grid_size: '(3, 2)', "
                 "tile_predictions_nms_thresh: 0.2}")
    v2 = box_job("training_parameters: {model_name: fasterrcnn_resnet18_fpn, box_score_threshold: 0.4, "
                 "nms_iou_threshold: 0.3, box_detections_per_image: 7, tile_grid_size: 3x2, "
                 "tile_predictions_nms_threshold: 0.2}")
    assert v1.training_parameters == v2.training_parameters
    assert v2.training_parameters["tile_grid_size"] == "3x2"


def test_openmmlab_models_stop_the_job_before_any_trial_without_the_extra(monkeypatch):
    for mod in ("mmengine", "mmcv.ops", "mmdet", "mmyolo"):
        monkeypatch.setitem(sys.modules, mod, None)  # as if the extra were not installed
    with pytest.raises(VisionsweepError, match=r"model_name: yolov5, the default model of image_object_detection, "
                                               r"cannot run here: .*make openmmlab.*or set model_name to one of"):
        check_supported(box_job(""))
    with pytest.raises(VisionsweepError, match=r"MMDetection models need the OpenMMLab extra.*make openmmlab"):
        check_supported(box_job("training_parameters: {model_name: atss_r50_fpn_1x_coco}"))
    check_supported(box_job("training_parameters: {model_name: retinanet_resnet50_fpn}"))


def test_a_malformed_box_names_the_file_and_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = ['{"image_url": "a.png", "label": [{"label": "x", "topX": 0.1, "topY": 0.1, '
             '"bottomX": 0.5, "bottomY": 0.5}]}',
             '{"image_url": "a.png", "label": [{"label": "x", "topX": 0.6, "topY": 0.1, '
             '"bottomX": 0.5, "bottomY": 0.5}]}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: label: expected bottomX > topX"):
        prepare_data(hp.DETECTION, "label", str(tmp_path / "d.jsonl"), None, 0.2, 0)


def test_segmentation_samples_carry_masks_that_match_their_boxes(shapes_segmentation):
    tr, va = shapes_segmentation
    data = prepare_data(hp.SEGMENTATION, "label", str(tr), str(va), 0.2, 0)
    task = make_task(hp.SEGMENTATION, data.classes)
    ds = task.train_dataset(resolved(hp.SEGMENTATION, model_name="maskrcnn_resnet18_fpn"), data)
    torch.manual_seed(0)
    for i in range(4):
        img, t = ds[i]
        assert t["masks"].shape == (len(t["boxes"]), *img.shape[-2:])
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            assert abs(xs.min() - box[0]) <= 2 and abs(xs.max() + 1 - box[2]) <= 2
            assert abs(ys.min() - box[1]) <= 2 and abs(ys.max() + 1 - box[3]) <= 2


def test_a_polygon_survives_the_round_trip_through_a_mask():
    from trainers.polygons import mask_to_polygons, polygons_to_mask

    hexagon = [0.3, 0.1, 0.7, 0.1, 0.9, 0.5, 0.7, 0.9, 0.3, 0.9, 0.1, 0.5]
    mask = polygons_to_mask([hexagon], 120, 160)
    (back,) = mask_to_polygons(mask.astype(np.float32), threshold=0.5, max_points=100)
    again = polygons_to_mask([back], 120, 160)
    assert (mask & again).sum() / (mask | again).sum() > 0.95
    # the vertices come back (within two pixels), not just the area
    xy = np.asarray(back).reshape(-1, 2) * [160, 120]
    for vx, vy in np.asarray(hexagon).reshape(-1, 2) * [160, 120]:
        assert np.hypot(xy[:, 0] - vx, xy[:, 1] - vy).min() < 2.5


@pytest.mark.parametrize("task,cpu_first,gpu_first", [
    (hp.DETECTION, "fasterrcnn_resnet18_fpn", ("yolov5", "fasterrcnn_resnet50_fpn")),
    (hp.SEGMENTATION, "maskrcnn_resnet18_fpn", ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")),
])
def test_automode_plans_detectors_for_the_hardware(task, cpu_first, gpu_first):
    from scheduler import automode

    cpu = automode.plan(task, 8, {}, has_gpu=False)
    gpu = automode.plan(task, 8, {}, has_gpu=True)
    # fine-tuning from COCO / ImageNet weights: the first trial takes the family's first recipe (SGD at the
    # detectors' default 0.005, the rate their COCO weights were trained with); on CPU YOLOv5-s leads where its
    # extra is installed (SGD at YOLOv5's 0.01)
    yolo = task == hp.DETECTION and automode.extra_installed("yolov5")
    assert cpu["first_trial"]["config"] == ({"model_name": "yolov5", "optimizer": "sgd", "learning_rate": 0.01,
                                             "model_size": "small"} if yolo else
                                            {"model_name": cpu_first, "optimizer": "sgd", "learning_rate": 0.005})
    # on GPUs yolov5, the spec's default detector, leads where its extra is installed
    lead = gpu_first[0] if automode.extra_installed("yolov5") else gpu_first[1]
    assert gpu["first_trial"]["config"]["model_name"] == lead
    for p, gpu_plan in ((cpu, False), (gpu, True)):
        names = [m["model_name"] for m in p["models"]] + [m["model_name"] for m in p["left_out"]]
        assert all(n in hp.MODELS[task] or hp.model_backend(n) == "mmdetection" for n in names)
        # on CPU only the zoo's models, and YOLOv5 only at its small size
        assert gpu_plan or (all(n in hp.MODELS[task] for n in names) and all(
            m["settings"] == {"model_size": "small"} for m in p["models"] if m["model_name"] == "yolov5"))
        assert len(p["models"]) == 2 and all(m["why"] for m in p["models"])  # 8 trials: about one model per 4
        for sub in p["space"]:  # fine-tuning: SGD around the detectors' default (0.005), and AdamW
            name, lr, opt = sub["model_name"].values[0], sub["learning_rate"], sub["optimizer"].values[0]
            if automode.family(task, name) != "detector":
                continue
            low, high = (0.005 / 4, 0.015) if opt == "sgd" else (3e-5, 3e-4)
            assert np.exp(lr.min_value) == pytest.approx(low) and np.exp(lr.max_value) == pytest.approx(high)
    # from random initialisation: the spec's defaults, one SGD range around them
    scratch = automode.plan(task, 8, {}, has_gpu=False, pretrained=False)
    assert scratch["first_trial"]["config"] == ({"model_name": "yolov5", "model_size": "small"} if yolo else
                                                {"model_name": cpu_first})
    assert {sub["optimizer"].values[0] for sub in scratch["space"]} == {"sgd"}

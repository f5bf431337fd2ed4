"""Object detection and instance segmentation end to end on a real local Ray (SPEC §1, §6.5, §8.4, §9.5, §14):
job YAML (both key spellings) -> sweep -> early termination -> best model package -> predict (§15, COCO results).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_trials
from scheduler.spec import parse_job
from serving.predictor import Predictor
from visionsweep.cli import main as cli

pytestmark = pytest.mark.ray


def box_job(train: Path, valid: Path, task: str, body: str) -> str:
    return (f"task: {task}\ntarget_column_name: label\n"
            f"training_data: {{path: {train}, type: mltable}}\nvalidation_data: {{path: {valid}, type: mltable}}\n"
            "visionsweep: {pretrained: false, tracking: {enabled: false}}\n" + body)


# v2 (CLI) spellings. A trial at learning_rate 0 never moves its weights: RetinaNet's prior keeps every score
# near 0.01, below the 0.05 floor of the AP ranking, so its mAP stays 0 while the learning trial's rises;
# the bandit policy stops it at an evaluation point before its last epoch.
DETECTION_V2 = """\
limits: {max_trials: 2, max_concurrent_trials: 1}
training_parameters:
  model_name: retinanet_resnet50_fpn
  number_of_epochs: 3
  min_size: 64
  max_size: 64
  optimizer: adamw
  learning_rate_scheduler: none
  early_stopping: false
  training_batch_size: 2
  validation_batch_size: 4
  validation_metric_type: coco_voc
  validation_iou_threshold: 0.5
  box_score_threshold: 0.2
  nms_iou_threshold: 0.45
  box_detections_per_image: 20
  random_seed: 0
search_space:
  - learning_rate: {type: choice, values: [0.001, 0.0]}
sweep:
  sampling_algorithm: grid
  early_termination: {type: bandit, slack_factor: 0.1, delay_evaluation: 1}
"""


def test_a_detection_sweep_stops_the_trial_that_does_not_learn(ray_session, shapes_detection, tmp_path):
    train, valid = shapes_detection
    job = parse_job(box_job(train, valid, "image_object_detection", DETECTION_V2), source=tmp_path / "job.yml")
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    trials = {rec.params["learning_rate"]: rec for rec in read_trials(tmp_path / "run").values()}
    good, bad = trials[0.001], trials[0.0]
    assert good.status == "completed" and [m["epoch"] for m in good.metrics] == [1, 2, 3]
    assert bad.status == "stopped (bandit)" and len(bad.metrics) < 3
    assert all(m["mean_average_precision"] == 0.0 for m in bad.metrics)
    assert max(m["mean_average_precision"] for m in good.metrics) > 0
    # coco_voc: the primary metric at validation_iou_threshold, COCO's 0.50:0.95 beside it, per-class AP
    last = good.metrics[-1]
    assert {"coco_mean_average_precision", "precision", "recall", "validation_images"} <= set(last)
    assert last["validation_images"] == 8
    assert set(last["per_label_metrics"]) <= {"disc", "square"}
    assert result.best_trial == good.trial_id

    best = tmp_path / "run" / "best"
    settings = json.loads((best / "settings.json").read_text())
    assert settings["box_score_threshold"] == 0.2 and settings["nms_iou_threshold"] == 0.45
    assert settings["box_detections_per_image"] == 20 and settings["min_size"] == 64
    # predictions of the trained package in the §15 shape, and as COCO results for external evaluation
    image = sorted((train.parent / "images").glob("valid_*.png"))[0]
    (resp,) = Predictor(str(best), device="cpu", settings={"box_score_threshold": 0.0}).predict_images(
        [image.read_bytes()])
    assert 1 <= len(resp["boxes"]) <= 20 and {b["label"] for b in resp["boxes"]} <= {"disc", "square"}
    out = tmp_path / "coco.json"
    assert cli(["predict", str(best), str(image), "--format", "coco", "--setting", "box_score_threshold=0",
                "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == len(resp["boxes"])
    r = results[0]
    assert r["image_id"] == 0 and r["category_id"] in (1, 2) and r["score"] == resp["boxes"][0]["score"]
    x, y, w, h = r["bbox"]
    b = resp["boxes"][0]["box"]
    assert x == pytest.approx(b["topX"] * 64, abs=0.01) and w == pytest.approx((b["bottomX"] - b["topX"]) * 64,
                                                                                abs=0.02)


# v1 (SDK v1 / §6) spellings of the same settings, for instance segmentation
SEGMENTATION_V1 = """\
limits: {max_trials: 2, max_concurrent_trials: 2}
training_parameters:
  model_name: maskrcnn_resnet18_fpn
  number_of_epochs: 1
  min_size: 64
  max_size: 64
  optimizer: adamw
  lr_scheduler: none
  grad_accumulation_step: 1
  early_stopping: 0
  training_batch_size: 4
  validation_batch_size: 3
  validation_metric_type: coco
  box_score_thresh: 0.25
  box_nms_thresh: 0.4
  box_detections_per_img: 10
  layers_to_freeze: 1
search_space:
  - learning_rate: {type: choice, values: [0.0005, 0.001]}
sweep: {sampling_algorithm: random}
"""


def test_an_instance_segmentation_sweep_with_v1_names_exports_polygons(ray_session, shapes_segmentation, tmp_path):
    train, valid = shapes_segmentation
    job = parse_job(box_job(train, valid, "image_instance_segmentation", SEGMENTATION_V1),
                    source=tmp_path / "job.yml")
    assert job.training_parameters["box_score_threshold"] == 0.25  # v1 names arrive under their v2 names
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    trials = read_trials(tmp_path / "run")
    assert len(trials) == 2 and all(t.status == "completed" and len(t.metrics) == 1 for t in trials.values())
    for t in trials.values():
        m = t.metrics[-1]
        assert 0.0 <= m["mean_average_precision"] <= 1.0 and "mean_average_precision_50" in m
        assert m["validation_images"] == 4
    best = tmp_path / "run" / "best"
    assert result.best_trial in trials
    settings = json.loads((best / "settings.json").read_text())
    assert settings["box_score_threshold"] == 0.25 and settings["nms_iou_threshold"] == 0.4
    assert settings["mask_pixel_score_threshold"] == 0.5 and settings["max_number_of_polygon_points"] == 100
    config = json.loads((best / "training_config.json").read_text())
    assert config["layers_to_freeze"] == 1 and config["box_detections_per_image"] == 10
    image = sorted((train.parent / "images").glob("valid_*.png"))[0]
    (resp,) = Predictor(str(best), device="cpu", settings={"box_score_thresh": 0.0,
                                                           "max_number_of_polygon_points": 12}).predict_images(
        [image.read_bytes()])
    assert resp["boxes"]
    for b in resp["boxes"]:
        assert b["label"] in ("disc", "square")
        assert all(len(p) % 2 == 0 and 3 <= len(p) // 2 <= 12 and all(0 <= v <= 1 for v in p) for p in b["polygon"])

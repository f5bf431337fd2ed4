"""Detectors of §5.1, their packages and their §15 response bodies (pure logic + real tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.predictor import Predictor, format_detections
from tests.conftest import make_detection_package
from trainers.errors import VisionsweepError
from trainers.hyperparameters import DETECTION_MODELS, SEGMENTATION_MODELS
from trainers.models.detectors import list_detectors
from trainers.polygons import mask_to_polygons, polygons_to_mask

IMAGE = (Path(__file__).resolve().parent.parent / "trainers" / "sample_data" / "fashion_mnist" / "images"
         / "test_0000.png").read_bytes()


def test_every_builtin_detector_of_the_spec_is_registered():
    assert set(list_detectors()) == (set(DETECTION_MODELS) | set(SEGMENTATION_MODELS)) - {"yolov5"}


def test_format_detections_normalises_filters_and_orders():
    out = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 200.0, 100.0], [5.0, 5.0, 6.0, 6.0],
                                  [1.0, 1.0, 2.0, 2.0]]),
           "labels": torch.tensor([1, 2, 2, 0]), "scores": torch.tensor([0.5, 0.9, 0.2, 0.99])}
    r = format_detections(out, width=100, height=100, classes=["cat", "dog"], settings={"box_score_threshold": 0.3})
    # best first; below the threshold (0.2) and background (label 0) dropped; clipped to [0, 1]
    assert r == {"boxes": [
        {"box": {"topX": 0.0, "topY": 0.0, "bottomX": 1.0, "bottomY": 1.0}, "label": "dog", "score": 0.9},
        {"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.8}, "label": "cat", "score": 0.5}]}


def test_instance_masks_become_normalised_polygons_with_a_vertex_cap():
    mask = np.zeros((40, 60), dtype=np.float32)
    mask[10:30, 20:50] = 0.9
    (part,) = mask_to_polygons(mask, threshold=0.5, max_points=100)
    xs, ys = part[0::2], part[1::2]
    assert min(xs) == pytest.approx(20 / 60) and max(xs) == pytest.approx(50 / 60)
    assert min(ys) == pytest.approx(10 / 40) and max(ys) == pytest.approx(30 / 40)
    assert (polygons_to_mask([part], 40, 60) == (mask >= 0.5)).all()
    # below the pixel threshold: nothing
    assert mask_to_polygons(mask, threshold=0.95) == []
    # a disc capped at 10 vertices still covers most of it
    yy, xx = np.mgrid[:200, :200]
    disc = ((yy - 100) ** 2 + (xx - 90) ** 2 < 60 ** 2).astype(np.float32)
    (part,) = mask_to_polygons(disc, max_points=10)
    assert 3 <= len(part) // 2 <= 10
    back = polygons_to_mask([part], 200, 200)
    assert (back & (disc > 0)).sum() / (back | (disc > 0)).sum() > 0.85
    # two separate blobs are two parts
    two = np.zeros((20, 20), dtype=np.float32)
    two[2:6, 2:6] = two[12:18, 12:18] = 1
    assert len(mask_to_polygons(two)) == 2


@pytest.mark.parametrize("name,task", [("fasterrcnn_resnet18_fpn", "image_object_detection"),
                                       ("retinanet_resnet50_fpn", "image_object_detection"),
                                       ("maskrcnn_resnet18_fpn", "image_instance_segmentation")])
def test_detection_packages_round_trip_and_answer_in_the_spec_shape(tmp_path, name, task):
    pkg = make_detection_package(tmp_path, name, task)
    settings = json.loads((pkg / "settings.json").read_text())
    assert settings["min_size"] == 64 and settings["box_score_threshold"] == 0.3
    if task == "image_instance_segmentation":
        assert settings["mask_pixel_score_threshold"] == 0.5 and settings["max_number_of_polygon_points"] == 100
    # v1 names of the settings are accepted as overrides (§9.5 aliases); threshold 0 so a random model answers
    p = Predictor(str(pkg), device="cpu", settings={"box_score_thresh": 0.0, "box_detections_per_img": 3,
                                                    "max_number_of_polygon_points": 8})
    out = p.predict_images([IMAGE, IMAGE])
    assert len(out) == 2 and out[0] == out[1]
    boxes = out[0]["boxes"]
    assert 1 <= len(boxes) <= 3
    assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
    for b in boxes:
        c = b["box"]
        assert 0 <= c["topX"] <= c["bottomX"] <= 1 and 0 <= c["topY"] <= c["bottomY"] <= 1
        assert b["label"] in ("cat", "dog")
        if task == "image_instance_segmentation":
            for part in b["polygon"]:
                assert len(part) % 2 == 0 and 3 <= len(part) // 2 <= 8 and all(0 <= v <= 1 for v in part)
        else:
            assert "polygon" not in b


def test_a_package_whose_weights_do_not_match_its_model_is_a_clear_error(tmp_path):
    pkg = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", "image_object_detection")
    meta = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**meta, "num_classes": 5}))
    with pytest.raises(VisionsweepError, match="does not match model fasterrcnn_resnet18_fpn with 5 classes"):
        Predictor(str(pkg), device="cpu")


def test_tiled_inference_looks_at_every_tile_and_the_whole_image(tmp_path):
    pkg = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", "image_object_detection")
    p = Predictor(str(pkg), device="cpu", settings={"tile_grid_size": "(3, 2)", "box_score_thresh": 0.0,
                                                    "box_detections_per_img": 4})
    seen = []
    p.pkg.model.backbone.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    (out,) = p.predict_images([IMAGE])
    assert sum(seen) == 1 + 3 * 2  # the whole image and the six tiles of a 3 x 2 grid
    assert 1 <= len(out["boxes"]) <= 4
    for b in out["boxes"]:
        c = b["box"]
        assert 0 <= c["topX"] <= c["bottomX"] <= 1 and 0 <= c["topY"] <= c["bottomY"] <= 1
    with pytest.raises(VisionsweepError, match="tile_grid_size"):
        Predictor(str(pkg), device="cpu", settings={"tile_grid_size": "three by two"})


def test_settings_a_package_leaves_out_come_from_the_models_defaults(tmp_path):
    pkg = make_detection_package(tmp_path, "maskrcnn_resnet18_fpn", "image_instance_segmentation")
    (pkg / "settings.json").write_text(json.dumps({"box_score_thresh": 0.6}))  # a v1 name, nothing else
    s = Predictor(str(pkg), device="cpu").pkg.settings
    assert s["box_score_threshold"] == 0.6 and s["min_size"] == 600 and s["max_size"] == 1333
    assert s["mask_pixel_score_threshold"] == 0.5 and s["max_number_of_polygon_points"] == 100

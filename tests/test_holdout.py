"""A package scored on a held-out set (scheduler.holdout): what the demo and bench/model_quality.py print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.holdout import score_package
from serving.predictor import Predictor
from trainers.data.tables import mltable_text


def _table(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "MLTable").write_text(mltable_text("data.jsonl"))
    return folder


def test_accuracy_counts_the_images_whose_top_class_is_their_label(classifier, sample, tmp_path):
    images = sorted((sample / "images").glob("test_*.png"))[:6]
    predictor = Predictor(str(classifier), device="cpu")
    top = [r["labels"][max(range(3), key=r["probs"].__getitem__)]
           for r in predictor.predict_images([p.read_bytes() for p in images])]
    # the first four labelled as the model answers, the last two as anything else
    labels = top[:4] + [next(c for c in "abc" if c != t) for t in top[4:]]
    held_out = _table(tmp_path / "held", [{"image_url": str(p), "label": lab} for p, lab in zip(images, labels)])

    m = score_package(str(classifier), str(held_out))
    assert m == {"images": 6, "accuracy": pytest.approx(4 / 6), "correct": 4}


def test_detection_map_is_one_on_its_own_boxes_and_zero_on_boxes_elsewhere(trained_box_packages, shapes_detection,
                                                                          tmp_path):
    import shutil

    # one epoch leaves the detector unsure of itself: every detection counts (settings.json is the user's to edit)
    package = shutil.copytree(trained_box_packages["image_object_detection"], tmp_path / "pkg")
    settings = json.loads((package / "settings.json").read_text())
    (package / "settings.json").write_text(json.dumps({**settings, "box_score_threshold": 0.0}))
    _, valid = shapes_detection
    predictor = Predictor(str(package), device="cpu")
    rows = [json.loads(line) for f in sorted(Path(valid).glob("*.jsonl")) for line in f.read_text().splitlines()]
    for r in rows:
        r["image_url"] = str((Path(valid) / r["image_url"]).resolve())
    answers = predictor.predict_images([Path(r["image_url"]).read_bytes() for r in rows])
    own, elsewhere = [], []
    for r, a in zip(rows, answers):
        if not a["boxes"]:
            continue
        b = a["boxes"][0]  # the model's most confident box, as the ground truth
        own.append({**r, "label": [{"label": b["label"], **b["box"], "isCrowd": False}]})
        # a box of the same class in a corner the model's boxes do not reach at IoU 0.5
        elsewhere.append({**r, "label": [{"label": b["label"], "topX": 0.0, "topY": 0.0, "bottomX": 0.02,
                                          "bottomY": 0.02, "isCrowd": False}]})
    assert own, "the trained detector predicts no box on the shapes"

    hit = score_package(str(package), str(_table(tmp_path / "own", own)))
    miss = score_package(str(package), str(_table(tmp_path / "elsewhere", elsewhere)))
    assert hit["images"] == miss["images"] == len(own)
    assert hit["mean_average_precision"] == pytest.approx(1.0)
    assert miss["mean_average_precision"] == 0.0


def test_a_held_out_set_without_images_is_an_error_naming_it(classifier, tmp_path):
    empty = _table(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no labelled images"):
        score_package(str(classifier), str(empty))

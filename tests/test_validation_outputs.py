"""The report's predictions come from the evaluation that already ran (trainers/validation_outputs.py,
scheduler/predictions.py): a checkpoint holds its evaluation's per-image validation outputs, ``best/`` keeps them,
and the report draws from them what a second inference pass by the package draws, without loading the model.

Real trials (the engine, in-process), real packages and real images; the second pass is the old path itself
(``from_evaluation=False``), run on the same run folder for the comparison."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from scheduler.predictions import DIR, predictions_section, write_predictions
from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.engine import train
from trainers.hyperparameters import resolve_hyperparameters
from trainers.labels import label_json
from trainers.package import copy_package
from trainers.validation_outputs import FILE, read_outputs, sample_indices

AGAIN = "predicts the validation images again"  # the log line of the fallback (a second inference pass)


def _best_checkpoint(h, data, dest: Path) -> dict:
    """Train ``h`` on ``data`` in this process and write its last improving checkpoint to ``dest``; its metrics."""
    reports = []
    train(h, data, lambda m, save: reports.append((m, save)), device="cpu")
    m, save = [(m, s) for m, s in reports if s is not None][-1]
    save(str(dest))
    return m


def _run_folder(tmp_path: Path, data, checkpoint: Path) -> Path:
    """A run folder as a sweep leaves it for the report: ``best/`` copied from the checkpoint the way
    ``scheduler.finish.copy_best_package`` copies it, and ``data/valid.jsonl`` as the prepare stage writes it."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    copy_package(checkpoint, run / "best")
    (run / "data" / "valid.jsonl").write_text("".join(
        json.dumps({"image_url": r.image_url, "label": label_json(r.label), "source": r.source}) + "\n"
        for r in data.valid))
    return run


def _report_both_ways(run: Path, caplog) -> tuple[dict, str, dict]:
    """The report from the evaluation, with ``best/``'s weights moved away (so no model can be loaded), its HTML,
    then the old path's (the package predicts the images again) for comparison."""
    weights = run / "best" / "model.safetensors"
    aside = run / "weights.aside"
    shutil.move(weights, aside)
    try:
        with caplog.at_level(logging.INFO, logger="scheduler.predictions"):
            from_eval = write_predictions(run)
        html = predictions_section(run)
    finally:
        shutil.move(aside, weights)
    assert AGAIN not in caplog.text
    again = write_predictions(run, from_evaluation=False)
    assert again["source"] == "inference"
    return from_eval, html, again


def test_classification_report_from_the_best_evaluation(small_mltable, tmp_path, caplog):
    data = prepare_data(hp.MULTICLASS, "label", str(small_mltable), None, 0.2, 0)
    h = resolve_hyperparameters(data.task, {
        "model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32, "validation_crop_size": 32,
        "training_batch_size": 16, "validation_batch_size": 7, "number_of_epochs": 2, "early_stopping": False,
        "learning_rate": 0.05}, {})
    m = _best_checkpoint(h, data, tmp_path / "ckpt")

    # the checkpoint holds its evaluation's outputs, in validation order: they give the metric it reported
    stored = read_outputs(tmp_path / "ckpt")
    assert stored is not None and int(stored["epoch"]) == m["epoch"]
    assert list(stored["image_urls"]) == [r.image_url for r in data.valid]
    assert list(stored["classes"]) == data.classes and stored["probabilities"].shape == (len(data.valid), 3)
    assert stored["targets"].tolist() == [data.classes.index(r.label) for r in data.valid]
    assert np.mean(stored["probabilities"].argmax(1) == stored["targets"]) == pytest.approx(m["accuracy"])

    run = _run_folder(tmp_path, data, tmp_path / "ckpt")
    assert (run / "best" / FILE).is_file()
    ev, html, again = _report_both_ways(run, caplog)
    assert ev["source"] == "evaluation" and ev["epoch"] == m["epoch"]
    # the same page as a second pass: the confusion matrix, the accuracy, the mistakes and their scores
    assert ev["confusion_matrix"] == again["confusion_matrix"]
    assert ev["images_used"] == again["images_used"] == len(data.valid)
    assert ev["accuracy"] == again["accuracy"] == round(m["accuracy"], 4)
    key = lambda x: (x["image_url"], x["predicted"], x["true"])  # noqa: E731
    assert sorted(map(key, ev["mistakes"])) == sorted(map(key, again["mistakes"]))
    scores = {key(x): x["score"] for x in again["mistakes"]}
    assert all(x["score"] == pytest.approx(scores[key(x)], abs=2e-4) for x in ev["mistakes"])
    assert all((run / DIR / x["file"]).is_file() for x in ev["mistakes"]) or not ev["mistakes"]
    table = re.search(r'<table class="pred-confusion" id="confusion-matrix">.*?</table>', html).group(0)
    assert table in predictions_section(run)  # the second pass's page: the same table
    assert f"at its evaluation after epoch {m['epoch']}" in html

    # a run folder from before this version (no outputs beside best/): the old path, said in a log line
    (run / "best" / FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scheduler.predictions"):
        old = write_predictions(run)
    assert old["source"] == "inference" and f"{FILE} is missing" in caplog.text and AGAIN in caplog.text
    assert old["confusion_matrix"] == ev["confusion_matrix"]


@pytest.mark.parametrize("task, model, fixture", [
    ("image_object_detection", "fasterrcnn_resnet18_fpn", "shapes_detection"),
    ("image_instance_segmentation", "maskrcnn_resnet18_fpn", "shapes_segmentation"),
])
def test_detection_samples_from_the_best_evaluation(task, model, fixture, request, tmp_path, caplog):
    tr, va = request.getfixturevalue(fixture)
    data = prepare_data(task, "label", str(tr), str(va), 0.2, 0)
    data.train = data.train[:8]
    # every detection counts (a detector after one epoch scores low), 3 per image: something to draw
    h = resolve_hyperparameters(task, {"model_name": model, "min_size": 64, "max_size": 64, "number_of_epochs": 1,
                                       "optimizer": "adamw", "learning_rate": 0.001, "random_seed": 0,
                                       "learning_rate_scheduler": "none", "training_batch_size": 2,
                                       "validation_batch_size": 3, "box_score_threshold": 0.0,
                                       "box_detections_per_image": 3, "log_validation_loss": False}, {})
    _best_checkpoint(h, data, tmp_path / "ckpt")
    stored = read_outputs(tmp_path / "ckpt")
    picks = sample_indices(len(data.valid))
    assert stored["indices"].tolist() == picks and len(stored["counts"]) == len(picks)
    assert list(stored["image_urls"]) == [data.valid[i].image_url for i in picks]
    assert ("masks_rle" in stored) == (task == "image_instance_segmentation")

    run = _run_folder(tmp_path, data, tmp_path / "ckpt")
    ev, html, again = _report_both_ways(run, caplog)
    assert ev["source"] == "evaluation" and ev["images_used"] == len(picks) == again["images_used"]
    fields = lambda s: (s["image_url"], s["ground_truth"], s["predicted"], s["predicted_labels"])  # noqa: E731
    assert [fields(s) for s in ev["samples"]] == [fields(s) for s in again["samples"]]
    assert sum(s["predicted"] for s in ev["samples"]) > 0
    assert html.count("data:image/png;base64,") == len(picks)

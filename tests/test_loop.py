"""The classification trainer (SPEC §6.1, §6.4): evaluations, checkpoints, early stopping, schedules, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.predictor import BadImage, Predictor
from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.engine import lr_factor, train
from trainers.errors import TrainingError
from trainers.hyperparameters import resolve_hyperparameters
from trainers.metrics import multiclass_metrics, multilabel_metrics
from trainers.tasks import make_task

FAST = {"model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32,
        "validation_crop_size": 32, "training_batch_size": 16, "validation_batch_size": 32}


def run(data, **params):
    h = resolve_hyperparameters(data.task, {**FAST, **params}, {})
    reports = []
    summary = train(h, data, lambda m, save: reports.append((m, save)), device="cpu")
    return summary, reports


@pytest.fixture
def small_data(small_mltable):
    return prepare_data(hp.MULTICLASS, "label", str(small_mltable), None, 0.2, 0)


def test_reports_every_evaluation_and_checkpoints_on_improvement(small_data, tmp_path):
    summary, reports = run(small_data, number_of_epochs=5, evaluation_frequency=2, early_stopping=False,
                           learning_rate=0.05)
    # evaluations at epochs 2 and 4, and always after the last epoch
    assert [m["epoch"] for m, _ in reports] == [2, 4, 5]
    for m, _ in reports:
        assert {"accuracy", "precision_macro", "recall_weighted", "f1_score_macro", "validation_loss",
                "train_loss", "learning_rate", "train_images_per_sec"} <= set(m)
    # a checkpoint is offered exactly when the primary metric improved
    best = -1.0
    for m, save in reports:
        assert (save is not None) == (m["accuracy"] > best)
        best = max(best, m["accuracy"])
    assert summary["best"] == best
    # the checkpoint is a loadable model package
    m, save = next((m, s) for m, s in reports if s is not None)
    save(str(tmp_path / "pkg"))
    predictor = Predictor(str(tmp_path / "pkg"), device="cpu")
    out = predictor.predict_images([open(small_data.valid[0].image_url, "rb").read()])
    assert out[0]["labels"] == small_data.classes and math.isclose(sum(out[0]["probs"]), 1.0, rel_tol=1e-5)
    with pytest.raises(BadImage, match="image 1: not a decodable image"):
        predictor.predict_images([open(small_data.valid[0].image_url, "rb").read(), b"not an image"])


def test_checkpoint_frequency_counts_epochs(small_data):
    # §6.1: a checkpoint every 2nd epoch, and at every improvement (best/ is then the best evaluation)
    _, reports = run(small_data, number_of_epochs=4, checkpoint_frequency=2, early_stopping=False)
    best, expected = -1.0, []
    for m, _ in reports:
        expected.append(m["epoch"] % 2 == 0 or m["accuracy"] > best)
        best = max(best, m["accuracy"])
    assert [save is not None for _, save in reports] == expected
    assert expected[0] and expected[1] and expected[3]
    # evaluated every 3rd epoch: the checkpoint of epochs 2 and 4 goes with the evaluations of epochs 3 and 6
    _, reports = run(small_data, number_of_epochs=6, checkpoint_frequency=2, evaluation_frequency=3,
                     early_stopping=False, learning_rate=0.0)
    assert [m["epoch"] for m, _ in reports] == [3, 6] and all(save is not None for _, save in reports)
    _, reports = run(small_data, number_of_epochs=6, checkpoint_frequency=4, early_stopping=False)
    best, improved = -1.0, []
    for m, _ in reports:
        improved.append(m["accuracy"] > best)
        best = max(best, m["accuracy"])
    saved = [m["epoch"] for m, save in reports if save is not None]
    assert saved == sorted({4} | {m["epoch"] for (m, _), up in zip(reports, improved) if up})  # 4, not 8


def test_early_stopping_after_delay_and_patience(small_data):
    # learning_rate 0: the metric never improves after the first evaluation.
    summary, reports = run(small_data, number_of_epochs=10, learning_rate=0.0, early_stopping=True,
                           early_stopping_delay=1, early_stopping_patience=2)
    assert summary["early_stopped"] and summary["epochs"] == 3 and len(reports) == 3


def test_multilabel_trains_and_reports_iou(sample):
    data = prepare_data(hp.MULTILABEL, "label", str(sample / "train_multilabel"), None, 0.2, 0)
    data.train, data.valid = data.train[:64], data.valid[:32]
    _, reports = run(data, number_of_epochs=1, weighted_loss=1, optimizer="adamw", learning_rate=0.001)
    m = reports[-1][0]
    assert 0.0 <= m["iou"] <= 1.0 and "accuracy" in m and "f1_score_weighted" in m


def test_frozen_layers_do_not_change(small_data, tmp_path):
    import torch

    from trainers.package import load_package

    _, reports = run(small_data, number_of_epochs=1, layers_to_freeze=5, early_stopping=False)
    m, save = reports[-1]
    save(str(tmp_path / "p"))
    trained = load_package(str(tmp_path / "p")).model
    torch.manual_seed(0)  # the loop seeds with random_seed (default 0) before building the model
    from trainers.models.classifiers import build_model

    init = build_model("resnet18", 3, 32)
    assert torch.equal(trained.layer4[0].conv1.weight, init.layer4[0].conv1.weight)
    assert not torch.equal(trained.fc.weight, init.fc.weight)


def test_vit_needs_equal_crops(small_data):
    with pytest.raises(TrainingError, match="training_crop_size == validation_crop_size"):
        run(small_data, model_name="vits16r224", training_crop_size=48)


def test_warmup_cosine_schedule():
    h = resolve_hyperparameters(hp.MULTICLASS, {"number_of_epochs": 10, "warmup_cosine_lr_warmup_epochs": 2}, {})
    f = lr_factor(h, steps_per_epoch=10)
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0)  # linear warm-up over 2 epochs
    assert f(20) == pytest.approx(1.0)
    # cosine with 0.45 cycles: at the end, 0.5 * (1 + cos(pi * 0.45 * 2))
    assert f(100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))


def test_step_schedule():
    h = resolve_hyperparameters(hp.MULTICLASS, {"learning_rate_scheduler": "step", "step_lr_step_size": 2,
                                                "step_lr_gamma": 0.5}, {})
    f = lr_factor(h, steps_per_epoch=4)
    assert [f(s) for s in (0, 7, 8, 16)] == [1.0, 1.0, 0.5, 0.25]


def test_resolution_precedence_task_model_fixed_sampled():
    # task default < model default (§6.2) < training_parameters < sampled
    h = resolve_hyperparameters(hp.MULTILABEL, {"model_name": "vitl16r224"}, {})
    assert (h["learning_rate"], h["training_batch_size"]) == (0.002, 10)
    h = resolve_hyperparameters(hp.MULTILABEL, {"learning_rate": 0.1}, {"model_name": "resnet50"})
    assert (h["learning_rate"], h["training_batch_size"]) == (0.1, 78)
    h = resolve_hyperparameters(hp.MULTICLASS, {"learning_rate": 0.1},
                                {"learning_rate": 0.2, "training_batch_size": 32.0})
    assert h["learning_rate"] == 0.2 and h["training_batch_size"] == 32 and isinstance(h["training_batch_size"], int)
    assert resolve_hyperparameters(hp.MULTICLASS, {}, {})["model_name"] == "vitb16r224"


def test_weighted_loss_weights():
    task = make_task(hp.MULTICLASS, ["a", "b"])
    labels = ["a"] * 30 + ["b"] * 10
    assert task.class_weights(labels, 0) is None
    w2 = task.class_weights(labels, 2).tolist()
    assert w2 == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    assert task.class_weights(labels, 1).tolist() == pytest.approx(np.sqrt(w2).tolist())


def test_metrics_on_known_predictions():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = multiclass_metrics(y, p)
    assert m["accuracy"] == 0.75 and m["recall_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert 0 < m["auc_macro"] <= 1
    yt = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    pp = np.array([[0.9, 0.1, 0.2], [0.2, 0.9, 0.9], [0.1, 0.1, 0.1]])
    ml = multilabel_metrics(yt, pp)
    # IoU per image: {0}/{0,2} = 0.5, {1}/{1,2} = 0.5, empty/empty = 1
    assert ml["iou"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)

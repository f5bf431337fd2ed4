"""Hugging Face transformers image classifiers (SPEC §5.3): names, weights, training, packages, errors."""

from __future__ import annotations

import math
import shutil
import sys

import pytest
import torch

from serving.predictor import Predictor
from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.engine import train
from trainers.errors import VisionsweepError
from trainers.hyperparameters import resolve_hyperparameters
from trainers.models.huggingface import build
from trainers.models.names import CURATED_HF, hub_id


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no internet; the cache path is exercised


def test_both_spellings_of_the_curated_models_name_the_same_hub_model():
    assert hub_id("google-vit-base-patch16-224") == "google/vit-base-patch16-224"
    assert hub_id("google/vit-base-patch16-224") == "google/vit-base-patch16-224"
    assert sorted(CURATED_HF) == sorted(["google-vit-base-patch16-224", "microsoft-swinv2-base-patch4-window12-192-22k",
                                      "facebook-deit-base-patch16-224", "microsoft-beit-base-patch16-224-pt22k-ft22k"])
    for name in (*CURATED_HF, *CURATED_HF.values()):
        assert hp.model_backend(name) == "huggingface"
        assert hp.check_model_name(hp.MULTILABEL, name, "model_name") == name
    with pytest.raises(Exception, match="only valid for classification"):
        hp.check_model_name(hp.DETECTION, "google/vit-base-patch16-224", "model_name")


def test_a_model_that_is_nowhere_is_one_error_naming_the_id_and_where_it_looked():
    with pytest.raises(VisionsweepError) as e:
        build("google-vit-base-patch16-224", 3)
    msg = str(e.value)
    assert "google-vit-base-patch16-224 (google/vit-base-patch16-224)" in msg
    assert "Hugging Face cache" in msg and "visionsweep.pretrained_weights" in msg


def test_weights_from_a_save_pretrained_folder_under_the_curated_name(tiny_hf_classifier):
    net = build("google-vit-base-patch16-224", 4, weights=str(tiny_hf_classifier))
    from safetensors.torch import load_file

    saved = load_file(str(tiny_hf_classifier / "model.safetensors"))
    key = next(k for k in saved if k.endswith("embeddings.patch_embeddings.projection.weight"))
    assert torch.equal(net.model.state_dict()[key], saved[key])
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4)  # head re-sized to the job's classes
    # the processor's statistics (0.5) replace ImageNet's: a 0.5-grey image reaches the model as zeros
    grey = (torch.full((1, 3, 4, 4), 0.5) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(grey * net.scale + net.shift, torch.zeros(1, 3, 4, 4), atol=1e-6)
    # defaults follow the model's own input size where its config is on this machine
    d = hp.task_model_defaults(hp.MULTICLASS, str(tiny_hf_classifier))
    assert d["training_crop_size"] == d["validation_crop_size"] == 32


@pytest.mark.parametrize("task", [hp.MULTICLASS, hp.MULTILABEL])
def test_a_transformers_classifier_trains_and_its_package_predicts_with_no_hub(task, sample, small_mltable,
                                                                              tiny_hf_classifier, tmp_path):
    if task == hp.MULTICLASS:
        data = prepare_data(task, "label", str(small_mltable), None, 0.2, 0)
    else:
        data = prepare_data(task, "label", str(sample / "train_multilabel"), None, 0.2, 0)
        data.train, data.valid = data.train[:48], data.valid[:16]
    model_dir = shutil.copytree(tiny_hf_classifier, tmp_path / "model")
    h = resolve_hyperparameters(task, {"model_name": str(model_dir), "number_of_epochs": 1, "layers_to_freeze": 2,
                                       "training_batch_size": 16, "validation_batch_size": 16,
                                       "optimizer": "adamw", "learning_rate": 0.001}, {})
    assert h["training_crop_size"] == 32 and h["validation_resize_size"] == 32
    reports = []
    train(h, data, lambda m, save: reports.append((m, save)), device="cpu")
    m, save = reports[-1]
    assert ("accuracy" if task == hp.MULTICLASS else "iou") in m and math.isfinite(m["train_loss"])
    save(str(tmp_path / "pkg"))
    assert (tmp_path / "pkg" / "hf_config.json").is_file()
    shutil.rmtree(model_dir)  # the package alone is enough: the config travels inside it
    pred = Predictor(str(tmp_path / "pkg"), device="cpu")
    # layers_to_freeze 2: the embeddings and the first encoder layer kept their initial values
    init = build(str(tiny_hf_classifier), len(data.classes)).model.state_dict()  # the folder's weights
    trained = pred.pkg.model.model.state_dict()
    frozen = next(k for k in init if ".layers.0." in k or ".layer.0." in k)
    moved = next(k for k in init if ".layers.1." in k or ".layer.1." in k)
    assert torch.equal(trained[frozen], init[frozen]) and not torch.equal(trained[moved], init[moved])
    (out,) = pred.predict_images([open(data.valid[0].image_url, "rb").read()])
    assert out["labels"] == data.classes and len(out["probs"]) == len(data.classes)
    if task == hp.MULTICLASS:
        assert math.isclose(sum(out["probs"]), 1.0, rel_tol=1e-5)


def test_without_transformers_a_job_fails_before_any_trial_with_the_install_command(monkeypatch, small_mltable):
    from scheduler.preflight import check_supported
    from scheduler.spec import parse_job

    job = parse_job(f"""\
type: automl
task: image_classification
training_data: {{path: {small_mltable}, type: mltable}}
target_column_name: label
training_parameters: {{model_name: microsoft/beit-base-patch16-224}}
""")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(VisionsweepError, match=r"pip install 'visionsweep\[huggingface\]'"):
        check_supported(job)

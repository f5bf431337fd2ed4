"""The one model factory (``trainers.models.factory``) and the family registry (``trainers.models.families``).

Training (``Task.build_model``) and package loading (``Task.package_model``) build every family's model through
``create_model``: a model saved after training comes back from its package with the same modules, the same tensors
and the same outputs. The family registry decides which builder runs and which defaults a model has, and stays
light (no torch) for the job validator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import hyperparameters as hp
from trainers.errors import SpecError, VisionsweepError
from trainers.models import families
from trainers.models.factory import create_model
from trainers.package import load_package, save_package
from trainers.tasks import make_task

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["disc", "square", "star"]


def _has_openmmlab(yolo: bool) -> bool:
    try:
        from trainers.models.openmmlab import require

        require(yolo=yolo)
        return True
    except VisionsweepError:
        return False


def _round_trip(tmp_path: Path, task: str, name: str, fixed: dict, architecture: dict | None = None):
    """(the model the task builds for training, the model its package loads as), random weights."""
    h = hp.resolve_hyperparameters(task, {"model_name": name, **fixed}, {})
    t = make_task(task, CLASSES)
    arch = t.architecture(h, None) if architecture is None else architecture
    torch.manual_seed(0)
    trained = t.build_model(h, None, arch).eval()
    pkg = save_package(tmp_path / "pkg", model=trained, task=task, classes=CLASSES, hyperparameters=h, metrics={},
                       architecture=arch)
    return trained, load_package(str(pkg)).model


def _same_model(a: torch.nn.Module, b: torch.nn.Module, example) -> None:
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        out_a, out_b = a(example), b(example)
    if isinstance(out_a, torch.Tensor):
        assert torch.allclose(out_a, out_b)
    else:  # detectors: per image, a dict of boxes, labels, scores (masks)
        for da, db in zip(out_a, out_b, strict=True):
            assert da.keys() == db.keys() and all(torch.allclose(da[k], db[k]) for k in da)


@pytest.mark.parametrize("name,task", [("resnet18", hp.MULTICLASS), ("vits16r224", hp.MULTILABEL)])
def test_a_builtin_classifier_is_built_alike_for_training_and_from_its_package(tmp_path, name, task):
    # a ViT at 32 px: the package rebuilds it for the crop it was trained at (its position embedding's shape)
    sizes = {"training_crop_size": 32, "validation_crop_size": 32, "validation_resize_size": 32}
    trained, loaded = _round_trip(tmp_path, task, name, sizes)
    _same_model(trained, loaded, torch.rand(2, 3, 32, 32))


def test_a_hugging_face_classifier_is_built_alike_for_training_and_from_its_package(tmp_path, tiny_hf_classifier):
    sizes = {"training_crop_size": 32, "validation_crop_size": 32, "validation_resize_size": 32}
    trained, loaded = _round_trip(tmp_path, hp.MULTICLASS, str(tiny_hf_classifier), sizes)
    assert type(loaded).__name__ == "HFImageClassifier" and loaded.model.config.num_labels == len(CLASSES)
    _same_model(trained, loaded, torch.rand(2, 3, 32, 32))
    # the package's model is rebuilt from the architecture it saved: without it, the package is refused
    (tmp_path / "pkg" / "hf_config.json").unlink()
    with pytest.raises(VisionsweepError, match=r"pkg: not a model package of .*hf_config.json is missing"):
        load_package(str(tmp_path / "pkg"))


@pytest.mark.parametrize("name,task", [("fasterrcnn_resnet18_fpn", hp.DETECTION),
                                       ("maskrcnn_resnet18_fpn", hp.SEGMENTATION)])
def test_a_torchvision_detector_is_built_alike_for_training_and_from_its_package(tmp_path, name, task):
    # the architecture a package records (a pretrained backbone's frozen BatchNorm) is the one it is rebuilt with
    from trainers.models.detectors import FROZEN_BN

    trained, loaded = _round_trip(tmp_path, task, name, {"min_size": 64, "max_size": 64, "box_score_threshold": 0.0},
                                  architecture={"backbone_norm": FROZEN_BN})
    assert any(type(m).__name__ == "FrozenBatchNorm2d" for m in loaded.modules())
    assert hasattr(loaded, "roi_heads") and (loaded.roi_heads.mask_head is not None) == (task == hp.SEGMENTATION)
    _same_model(trained, loaded, [torch.rand(3, 64, 80)])


@pytest.mark.skipif(not _has_openmmlab(yolo=True), reason="the OpenMMLab extra (mmyolo) is not installed here")
@pytest.mark.parametrize("name,fixed", [
    ("yolov5", {"image_size": 64, "model_size": "small", "box_score_threshold": 0.0}),
    ("retinanet_r18_fpn_1x_coco", {"min_size": 64, "max_size": 64, "box_score_threshold": 0.0}),
])
def test_an_openmmlab_model_is_built_alike_for_training_and_from_its_package(tmp_path, name, fixed):
    trained, loaded = _round_trip(tmp_path, hp.DETECTION, name, fixed)
    assert type(loaded).__name__ == "MMDetector" and loaded.name == name
    _same_model(trained, loaded, [torch.rand(3, 64, 80)])


def test_an_unknown_or_misplaced_model_name_is_a_clear_error():
    with pytest.raises(SpecError, match=r"unknown model_name 'resnet9000' for task image_classification.*resnet50"):
        create_model("resnet9000", task=hp.MULTICLASS, num_classes=3, settings={"training_crop_size": 32})
    with pytest.raises(SpecError, match=r"unknown model_name 'yolov5' for task image_classification"):
        create_model("yolov5", task=hp.MULTICLASS, num_classes=3, settings={"training_crop_size": 32})
    with pytest.raises(SpecError, match=r"Hugging Face model .* is only valid for classification tasks"):
        create_model("google-vit-base-patch16-224", task=hp.DETECTION, num_classes=3, settings={})
    with pytest.raises(SpecError, match=r"MMDetection model .* is only valid for detection/segmentation"):
        create_model("mmd-3x-yolof_r50_c5_8x8_1x_coco", task=hp.MULTILABEL, num_classes=3, settings={})


def test_a_package_of_an_unknown_model_is_refused_naming_the_package(tmp_path, classifier):
    meta = json.loads((classifier / "model.json").read_text())
    (classifier / "model.json").write_text(json.dumps({**meta, "model_name": "resnet9000"}))
    with pytest.raises(SpecError, match=rf"^{classifier}: unknown model_name 'resnet9000'"):
        load_package(str(classifier))


def test_a_family_builder_builds_its_own_family_only():
    """The factory alone picks the builder: a family's builder refuses another family's model."""
    from trainers.models.classifiers import build_model
    from trainers.models.detectors import build_detector

    with pytest.raises(SpecError, match="has no classification builder"):
        build_model("google-vit-base-patch16-224", 3, 32)
    h = hp.resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5"}, {})
    with pytest.raises(VisionsweepError, match="unknown detection model 'yolov5'"):
        build_detector("yolov5", 3, h)


def test_every_model_name_has_one_family_per_kind_of_task():
    expected = {"resnet50": "classifiers", "vitl16r224": "classifiers", "google-vit-base-patch16-224": "huggingface",
                "org/some-vit": "huggingface"}
    for task in hp.CLASSIFICATION_TASKS:
        for name in hp.MODELS[task]:
            assert families.family_of(name, boxes=hp.has_boxes(task)).name == "classifiers"
        for name, family in expected.items():
            assert families.family_of(name, boxes=hp.has_boxes(task)).name == family
    for task in hp.BOX_TASKS:
        for name in (*hp.MODELS[task], *hp.CURATED_MMDET[task], "atss_r50_fpn_1x_coco"):
            want = "yolov5" if name == "yolov5" else "mmdetection" if hp.model_backend(name) == "mmdetection" \
                else "detectors"
            assert families.family_of(name, boxes=hp.has_boxes(task)).name == want, name
    # each family's builder is importable, by the path its entry names
    for name in families.FAMILIES:
        assert callable(families.FAMILIES.get(name).load_builder())


def test_the_family_defaults_lie_over_the_task_defaults():
    # the ViTs' learning rates are keyed by task literals (this leaf cannot import the table's names)
    assert set(families._VIT_LR) == set(hp.CLASSIFICATION_TASKS)
    d = hp.task_model_defaults
    assert (d(hp.MULTILABEL, "vitb16r224")["learning_rate"], d(hp.MULTILABEL, "resnet50")["learning_rate"],
            d(hp.MULTICLASS, "resnet50")["learning_rate"]) == (0.025, 0.035, 0.01)
    assert d(hp.MULTICLASS, "vitl16r224")["training_batch_size"] == 10
    assert (d(hp.DETECTION, "fasterrcnn_resnet50_fpn")["training_batch_size"],
            d(hp.SEGMENTATION, "maskrcnn_resnet50_fpn")["learning_rate"]) == (2, 0.005)
    y = d(hp.DETECTION, "yolov5")
    assert (y["number_of_epochs"], y["training_batch_size"], y["box_score_threshold"]) == (30, 16, 0.1)
    assert d(hp.MULTICLASS, "org/some-vit")["optimizer"] == "adamw"
    # and training_parameters lie over them (task < model default < training_parameters < sampled)
    h = hp.resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5", "training_batch_size": 4},
                                   {"learning_rate": 0.02})
    assert (h["training_batch_size"], h["learning_rate"], h["number_of_epochs"]) == (4, 0.02, 30)


def test_the_registry_and_the_table_import_no_torch():
    code = ("import sys; from trainers import hyperparameters as hp; import trainers.models.families; "
            "hp.task_model_defaults(hp.MULTILABEL, 'vitb16r224'); hp.task_model_defaults(hp.DETECTION, 'yolov5'); "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"

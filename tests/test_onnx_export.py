"""ONNX export of model packages (SPEC §15 conventions, §14 enable_onnx_normalization), checked with onnxruntime
against the PyTorch package on the same real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from serving.predictor import Predictor
from tests.conftest import make_detection_package
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.package import save_package
from trainers.package.onnx import export_onnx
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainers.workers import Runtime
from visionsweep.cli import main


def _classifier(root: Path, name: str) -> Path:
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.factory import create_model

    torch.manual_seed(0)
    h = resolve_hyperparameters(hp.MULTICLASS, {"model_name": name, "validation_resize_size": 32,
                                                "validation_crop_size": 32, "training_crop_size": 32}, {})
    model = create_model(name, task=hp.MULTICLASS, num_classes=3, settings=h)
    return save_package(root / "pkg", model=model, task=hp.MULTICLASS,
                        classes=["a", "b", "c"], hyperparameters=h, metrics={})


@pytest.mark.parametrize("family,normalization", [("resnet18", False), ("resnet18", True), ("huggingface", True)])
def test_a_classifier_exports_with_the_services_names_and_agrees_with_the_package(
        family, normalization, tmp_path, sample, tiny_hf_classifier):
    pkg = _classifier(tmp_path, str(tiny_hf_classifier) if family == "huggingface" else family)
    r = export_onnx(str(pkg), tmp_path / "m.onnx", batch_size=2, normalization=normalization)
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["labels"] == ["a", "b", "c"] and meta["input"]["normalization_in_graph"] is normalization
    sess = ort.InferenceSession(str(r.path))
    assert [i.name for i in sess.get_inputs()] == ["input1"] and [o.name for o in sess.get_outputs()] == ["output1"]
    # three real images, pre-processed as the sidecar says; the batch axis is dynamic (traced with 2)
    images = [Image.open(p).convert("RGB") for p in sorted((sample / "images").glob("*.png"))[:3]]
    predictor = Predictor(str(pkg), device="cpu")
    x = torch.stack([predictor.transform(im) for im in images])  # resize, crop, normalise
    if normalization:  # RGB in [0, 1]: the graph normalises
        x = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    (logits,) = sess.run(None, {"input1": x.numpy()})
    probs = np.array([p["probs"] for p in predictor.predict_images(images)])
    assert logits.shape == (3, 3)
    assert (logits.argmax(1) == probs.argmax(1)).all()
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probs, atol=1e-4)
    assert r.max_abs_diff is not None and r.max_abs_diff < 1e-3


def _shape_images(folder: Path, n: int, size=(64, 64)) -> torch.Tensor:
    paths = sorted((folder.parent / "images").glob("*.png"))[:n]
    return torch.stack([pil_to_tensor(Image.open(p).convert("RGB").resize(size[::-1])).float() / 255 for p in paths])


def test_detectors_export_per_image_boxes_labels_scores_and_masks(trained_box_packages, shapes_detection, tmp_path):
    x = _shape_images(shapes_detection[1], 2)
    for task, pkg in trained_box_packages.items():
        masks = task == hp.SEGMENTATION
        # one epoch of training (RetinaNet's scores are still near its 0.01 prior): keep the weak detections
        low = {"box_score_threshold": 0.005, "box_detections_per_image": 20}
        r = export_onnx(str(pkg), tmp_path / f"{task}.onnx", batch_size=2, image_size="64x64", check_images=[x],
                        settings=low)
        sess = ort.InferenceSession(str(r.path))
        names = ["boxes", "labels", "scores"] + (["masks"] if masks else [])
        assert [i.name for i in sess.get_inputs()] == ["input"]
        assert [o.name for o in sess.get_outputs()] == [f"{n}_{i}" for i in range(2) for n in names]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()})))
        # the same detections as the package's own predictor, boxes within a pixel
        predictor = Predictor(str(pkg), device="cpu", settings=low)
        ref = predictor.task.predict(predictor.pkg.model, list(x), predictor.pkg.settings, Runtime(torch.device("cpu")))
        for i in range(2):
            assert len(outs[f"boxes_{i}"]) == len(ref[i]["boxes"])
            # each exported detection is one of the package's: same label (0-based there), box within a pixel
            # (near-equal scores may come in another order)
            ref_boxes, ref_labels = ref[i]["boxes"].numpy(), ref[i]["labels"].numpy() - 1
            for box, label in zip(outs[f"boxes_{i}"], outs[f"labels_{i}"]):
                same = ref_labels == label
                assert same.any() and np.abs(ref_boxes[same] - box).max(axis=1).min() < 1.0
            if masks:
                assert outs[f"masks_{i}"].shape[1:] == (1, 64, 64)
        assert sum(len(outs[f"boxes_{i}"]) for i in range(2)) > 0  # a trained model: something to compare
        assert json.loads(Path(str(r.path) + ".json").read_text())["labels"] == ["disc", "square"]


def test_the_cli_exports_and_refuses_what_it_cannot(tmp_path, capsys):
    pkg = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", hp.DETECTION)
    assert main(["export", str(pkg), "--format", "onnx", "--image-size", "64x96"]) == 0
    assert "wrote" in capsys.readouterr().out and (pkg / "model.onnx").is_file()
    assert ort.InferenceSession(str(pkg / "model.onnx")).get_inputs()[0].shape == [1, 3, 64, 96]
    settings = json.loads((pkg / "settings.json").read_text())
    (pkg / "settings.json").write_text(json.dumps({**settings, "tile_grid_size": "2x2"}))
    with pytest.raises(VisionsweepError, match="tile_grid_size 2x2: tiled inference"):
        export_onnx(str(pkg), tmp_path / "t.onnx")
    assert main(["export", str(pkg), "--image-size", "64"]) == 2
    assert "--image-size: expected HEIGHTxWIDTH" in capsys.readouterr().err


@pytest.mark.parametrize("setting", [True, False])
def test_the_jobs_enable_onnx_normalization_decides_the_default_export(tmp_path, setting):
    """§14: a trial's ``enable_onnx_normalization`` is kept in its package and is what an export does
    when the command does not say otherwise."""
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.classifiers import build_model

    torch.manual_seed(0)
    h = resolve_hyperparameters(hp.MULTICLASS, {"model_name": "resnet18", "validation_resize_size": 32,
                                                "validation_crop_size": 32, "training_crop_size": 32,
                                                "enable_onnx_normalization": setting}, {})
    pkg = save_package(tmp_path / "pkg", model=build_model("resnet18", 3, 32), task=hp.MULTICLASS,
                       classes=["a", "b", "c"], hyperparameters=h, metrics={})
    export_onnx(str(pkg), tmp_path / "m.onnx", check=False)
    assert json.loads((tmp_path / "m.onnx.json").read_text())["input"]["normalization_in_graph"] is setting

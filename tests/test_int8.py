"""INT8 export of model packages (issue 28): onnxruntime's static quantisation of the fp32 export, calibrated on
real images pre-processed as the graph's input contract says, and checked against the PyTorch package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from serving.predictor import Predictor
from tests.conftest import make_detection_package
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.package import save_package
from trainers.package.int8 import export_int8
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ["Trouser", "Bag", "Sneaker"]
TREES = Path(__file__).resolve().parents[1] / "trainers" / "sample_data" / "trees" / "images"


def _labelled(sample: Path, split: str) -> list[tuple[Path, str]]:
    """The sample's images of CLASSES in ``split`` (train: 120, valid: 30), with their labels."""
    rows = [json.loads(ln) for ln in next((sample / split).glob("*.jsonl")).read_text().splitlines()]
    return [((sample / split / r["image_url"]).resolve(), r["label"]) for r in rows if r["label"] in CLASSES]


@pytest.fixture(scope="module")
def trained_mobilenet(sample, mobilenet_weights) -> torch.nn.Module:
    """MobileNetV2 from the real ImageNet file at 32 px, its 3-class head fitted (backbone frozen) on the sample's
    Trouser / Bag / Sneaker images: a classifier with real margins between its logits, as a fine-tuned package has
    (a randomly initialised one outputs logits of 1e-10, where every top-1 is a tie), in a second."""
    from trainers.models.classifiers import build_model
    from trainers.transforms import eval_transform

    torch.manual_seed(0)
    model = build_model("mobilenetv2", 3, 32, str(mobilenet_weights)).eval()
    t = eval_transform(32, 32)
    train = _labelled(sample, "train")
    x = torch.stack([t(Image.open(p).convert("RGB")) for p, _ in train])
    y = torch.tensor([CLASSES.index(lab) for _, lab in train])
    with torch.no_grad():
        feats = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
    head = model.classifier[1]
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), y).backward()
        opt.step()
    return model


def _package(folder: Path, model: torch.nn.Module) -> Path:
    from trainers.hyperparameters import resolve_hyperparameters

    h = resolve_hyperparameters(hp.MULTICLASS, {"model_name": "mobilenetv2", "validation_resize_size": 32,
                                                "validation_crop_size": 32, "training_crop_size": 32}, {})
    return save_package(folder, model=model, task=hp.MULTICLASS, classes=CLASSES, hyperparameters=h, metrics={})


def _run_with_package(root: Path, sample: Path, model: torch.nn.Module) -> Path:
    """A run folder as ``visionsweep run`` leaves it: ``best/`` and ``data/{train,valid}.jsonl`` + summary."""
    data = root / "run" / "data"
    data.mkdir(parents=True)
    for name, split in (("train", "train"), ("valid", "valid")):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"image_url": str(p), "label": lab}) + "\n"
                                                    for p, lab in _labelled(sample, split)))
    (data / "summary.json").write_text(json.dumps({"classes": CLASSES}))
    return _package(root / "run" / "best", model)


def test_a_classifier_quantises_to_int8_with_the_services_names_and_agrees_with_the_package(
        tmp_path, sample, trained_mobilenet):
    pkg = _run_with_package(tmp_path, sample, trained_mobilenet)
    r = export_int8(str(pkg), calibration_count=40)
    assert r.path == pkg / "model.int8.onnx" and r.fp32.path == pkg / "model.onnx"
    meta = json.loads((pkg / "model.int8.onnx.json").read_text())
    fp32_meta = json.loads((pkg / "model.onnx.json").read_text())
    # the same contract as the fp32 export: names, labels, pre-processing
    assert meta["input"] == fp32_meta["input"] and meta["outputs"] == fp32_meta["outputs"]
    assert meta["labels"] == CLASSES
    q = meta["quantization"]
    assert q["format"] == "QDQ" and q["calibration_count"] == 40 and q["check_count"] == len(_labelled(sample, "valid"))
    assert q["calibration_source"].startswith("the package's training data") and "train.jsonl" in q[
        "calibration_source"]
    assert "valid.jsonl" in q["check_source"]
    assert "Conv" in q["quantized_operators"] and "Conv" not in q["operators_in_fp32"]
    assert q["operators_in_fp32"] == r.operators_in_fp32
    # really INT8: int8 weight initialisers, a quarter-ish of the fp32 file
    graph = onnx.load(str(r.path)).graph
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert r.path.stat().st_size < 0.5 * r.fp32.path.stat().st_size

    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input1"] and [o.name for o in sess.get_outputs()] == ["output1"]
    # the held-out images, pre-processed as the sidecar says, one batch (the batch axis stays dynamic)
    valid = _labelled(sample, "valid")
    images = [Image.open(p).convert("RGB") for p, _ in valid]
    predictor = Predictor(str(pkg), device="cpu")
    x = torch.stack([predictor.transform(im) for im in images])
    if meta["input"]["normalization_in_graph"]:
        x = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    (logits,) = sess.run(None, {"input1": x.numpy()})
    probs = np.array([p["probs"] for p in predictor.predict_images(images)])
    assert probs.max(1).min() > 0.5  # a trained classifier: its top-1 is no tie
    assert (probs.argmax(1) == [CLASSES.index(lab) for _, lab in valid]).mean() > 0.8  # and mostly right
    agreement = float((logits.argmax(1) == probs.argmax(1)).mean())
    assert agreement >= 0.95 and agreement == pytest.approx(r.agreement)
    assert q["top1_agreement_with_package"] == pytest.approx(agreement, abs=1e-4)


def test_calibration_images_come_from_the_caller_where_the_package_records_no_data(
        tmp_path, sample, trained_mobilenet):
    pkg = _package(tmp_path / "pkg", trained_mobilenet)
    with pytest.raises(VisionsweepError, match="needs calibration images: the package records no training data"):
        export_int8(str(pkg))
    assert not (pkg / "model.onnx").exists()  # refused before any export
    r = export_int8(str(pkg), tmp_path / "out" / "m.onnx", calibration_images=[p for p, _ in
                                                                             _labelled(sample, "train")[:20]],
                    normalization=True)
    assert r.path == tmp_path / "out" / "m.onnx" and r.fp32.path == tmp_path / "out" / "m.fp32.onnx"
    q = r.metadata["quantization"]
    assert q["calibration_source"] == "images given by the caller" and q["calibration_count"] == 20
    assert q["check_source"].startswith("the calibration images") and r.checked_images == 20
    assert r.metadata["input"]["normalization_in_graph"] is True and r.agreement >= 0.95


def test_calibration_on_unrepresentative_images_is_caught_by_the_check(tmp_path, sample, trained_mobilenet):
    """Activation ranges calibrated on blank images clip every real image's activations: the check against the
    package must see it and refuse, naming the agreement and the fp32 way out."""
    pkg = _package(tmp_path / "pkg", trained_mobilenet)
    blank = []
    for i in range(8):
        blank.append(tmp_path / f"blank{i}.png")
        Image.new("RGB", (32, 32), (i, i, i)).save(blank[-1])
    real = [p for p, _ in _labelled(sample, "valid")]
    with pytest.raises(VisionsweepError, match=r"agrees with the package's top-1 prediction on only .* fp32 export"):
        export_int8(str(pkg), calibration_images=blank, check_images=real)
    r = export_int8(str(pkg), calibration_images=blank, check_images=real, keep_below_tolerance=True)
    assert r.agreement < 0.95 and r.metadata["quantization"]["top1_agreement_with_package"] == round(r.agreement, 4)
    assert json.loads(Path(str(r.path) + ".json").read_text())["quantization"]["calibration_count"] == 8


def test_a_detector_quantises_and_is_checked_on_its_best_detection(tmp_path):
    """onnxruntime quantises torchvision's Faster R-CNN graph: the backbone, heads and RoiAlign get QDQ, the
    box decoding and NMS stay float; each image's best detection must be found again by the INT8 graph."""
    pkg = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", hp.DETECTION)
    trees = sorted(TREES.glob("*.jpg"))
    low = {"box_score_threshold": 0.01}  # random weights: their detections are weak, but there are some
    r = export_int8(str(pkg), calibration_images=trees[:6], check_images=trees[6:12], image_size="64x96",
                    settings=low)
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["boxes_0", "labels_0", "scores_0"]
    q = r.metadata["quantization"]
    assert q["check_images_with_predictions"] == 6 and r.agreement >= 0.95
    assert "Conv" in q["quantized_operators"] and "NonZero" in q["operators_in_fp32"]
    # a package that finds nothing cannot vouch for its INT8 model: refused, naming why and the fp32 way
    with pytest.raises(VisionsweepError, match="cannot be checked: the package finds no detection .* fp32 export"):
        export_int8(str(pkg), calibration_images=trees[:2], check_images=trees[6:8], image_size="64x96",
                    settings={"box_score_threshold": 0.999})

"""Every built-in detector of the spec (§5.1) trains, freezes, predicts and serves on CPU at 64 px.

Per model name: one training step on two random 64x64 images (losses finite, gradients reach the
backbone's layer4 and the class head), eval-mode predictions in torchvision's documented shapes,
``layers_to_freeze: 2`` (§6.3) through the task's ``freeze()``, and a package written by
``save_package`` that the Predictor serves with exactly the in-memory model's detections (§15).

The ResNet-18 variants run by default (the end-to-end sweeps train RetinaNet and Mask R-CNN R-18 too);
the ResNet-34/50/101/152 ones (and RetinaNet, ResNet-50 only) are marked ``slow``:
``pytest tests/test_detector_zoo.py -m slow``.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from serving.predictor import Predictor, format_detections
from trainers.hyperparameters import DETECTION, SEGMENTATION, resolve_hyperparameters
from trainers.models.detectors import build_detector, get_detector_entry, list_detectors
from trainers.package import save_package
from trainers.tasks.detection import DetectionTask, SegmentationTask

CLASSES = ["cat", "dog"]
SIZE = 64
PER_IMAGE = 3  # box_detections_per_image of the models here and of the Predictor's override


def _slow(name: str) -> bool:
    return get_detector_entry(name).depth >= 34


NAMES = [pytest.param(n, marks=pytest.mark.slow, id=n) if _slow(n) else pytest.param(n, id=n)
         for n in list_detectors()]


def test_the_zoo_covers_every_family_and_depth_and_only_small_resnets_run_by_default():
    assert len(NAMES) == 11
    fast = [p.values[0] for p in NAMES if not p.marks]
    assert sorted(fast) == ["fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn"]


def _task_name(name: str) -> str:
    return SEGMENTATION if get_detector_entry(name).family == "maskrcnn" else DETECTION


def _settings(name: str, **extra) -> dict:
    h = resolve_hyperparameters(_task_name(name), {"model_name": name, "min_size": SIZE, "max_size": SIZE,
                                                   **extra}, {})
    # a random model scores low: keep everything, at most PER_IMAGE per image
    h["box_score_threshold"], h["box_detections_per_image"] = 0.0, PER_IMAGE
    return h


def _batch(segmentation: bool):
    """Two uint8-valued random images (as float in [0, 1]) with one and two boxes."""
    images = [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8).float() / 255 for _ in range(2)]
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
             torch.tensor([[4.0, 10.0, 30.0, 50.0], [20.0, 20.0, 60.0, 60.0]])]
    labels = [torch.tensor([1]), torch.tensor([1, 2])]
    targets = []
    for b, lab in zip(boxes, labels):
        t = {"boxes": b, "labels": lab}
        if segmentation:
            masks = torch.zeros((len(b), SIZE, SIZE), dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
                masks[i, y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 1
            t["masks"] = masks
        targets.append(t)
    return images, targets


def _train_step(model, segmentation: bool) -> dict[str, float]:
    images, targets = _batch(segmentation)
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    return {k: float(v.detach()) for k, v in losses.items()}


def _grad_norm(model, prefix: str) -> float:
    """Sum of |grad| over the parameters under ``prefix`` (all of which must have a grad)."""
    params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
    assert params, f"no parameter under {prefix}"
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient reached {missing[:3]}"
    return sum(float(p.grad.abs().sum()) for _, p in params)


def _class_heads(name: str) -> list[str]:
    family = get_detector_entry(name).family
    if family == "retinanet":
        return ["head.classification_head.cls_logits."]
    heads = ["roi_heads.box_predictor.cls_score."]
    if family == "maskrcnn":
        heads.append("roi_heads.mask_predictor.mask_fcn_logits.")
    return heads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread, and a second OpenMP thread waiting on a busy core
    (tests run side by side) makes them many times slower; restored for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def stepped(name):
    """The detector after one training step (gradients kept), switched to eval mode."""
    torch.manual_seed(0)
    seg = get_detector_entry(name).family == "maskrcnn"
    h = _settings(name)
    model = build_detector(name, len(CLASSES), h)
    losses = _train_step(model, seg)
    grads = {"layer4": _grad_norm(model, "backbone.body.layer4."),
             "conv1": _grad_norm(model, "backbone.body.conv1."),
             **{head: _grad_norm(model, head) for head in _class_heads(name)}}
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    model.eval()
    return {"model": model, "h": h, "losses": losses, "grads": grads, "nonfinite": nonfinite, "seg": seg}


def test_one_training_step_has_finite_losses_and_reaches_the_backbone_and_class_head(name, stepped):
    family = get_detector_entry(name).family
    expected = {"retinanet": {"classification", "bbox_regression"},
                "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}}
    expected["maskrcnn"] = expected["fasterrcnn"] | {"loss_mask"}
    assert set(stepped["losses"]) == expected[family]
    assert all(math.isfinite(v) for v in stepped["losses"].values()), stepped["losses"]
    assert sum(stepped["losses"].values()) > 0
    assert not stepped["nonfinite"], stepped["nonfinite"][:3]
    # nothing frozen by default: the stem, layer4 and the class head(s) all learn
    assert all(g > 0 for g in stepped["grads"].values()), stepped["grads"]


def test_eval_predictions_have_the_documented_shapes(name, stepped):
    torch.manual_seed(1)
    image = torch.rand(3, SIZE, SIZE)
    with torch.no_grad():
        (out,) = stepped["model"]([image])
    keys = {"boxes", "labels", "scores"} | ({"masks"} if stepped["seg"] else set())
    assert set(out) == keys
    n = len(out["boxes"])
    assert 1 <= n <= PER_IMAGE  # threshold 0: a random model still answers, capped per image
    assert out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
    assert out["labels"].shape == (n,) and out["labels"].dtype == torch.int64
    assert out["scores"].shape == (n,) and out["scores"].dtype == torch.float32
    b = out["boxes"]
    assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    assert b.min() >= 0 and b.max() <= SIZE  # clipped to the input image, in its pixels
    assert set(out["labels"].tolist()) <= {1, 2}  # 0 is background, never returned
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
    if stepped["seg"]:
        m = out["masks"]
        assert m.shape == (n, 1, SIZE, SIZE) and m.dtype == torch.float32
        assert m.min() >= 0 and m.max() <= 1


def test_layers_to_freeze_2_stops_the_stem_and_layer1_but_not_layer2(name):
    torch.manual_seed(0)
    seg = get_detector_entry(name).family == "maskrcnn"
    task = (SegmentationTask if seg else DetectionTask)(CLASSES)
    h = _settings(name, layers_to_freeze=2)
    assert h["layers_to_freeze"] == 2
    model = build_detector(name, len(CLASSES), h)
    task.freeze(model, h)
    losses = _train_step(model, seg)
    assert all(math.isfinite(v) for v in losses.values())
    frozen = [(n, p) for n, p in model.named_parameters()
              if n.startswith(("backbone.body.conv1.", "backbone.body.bn1.", "backbone.body.layer1."))]
    assert frozen and all(not p.requires_grad and p.grad is None for _, p in frozen)
    assert _grad_norm(model, "backbone.body.layer2.") > 0
    assert _grad_norm(model, "backbone.body.layer4.") > 0
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.body.layer2."))


def _png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def test_a_saved_package_serves_the_trained_models_detections(name, stepped, tmp_path):
    task = _task_name(name)
    pkg = save_package(tmp_path / name, model=stepped["model"], task=task, classes=CLASSES,
                       hyperparameters=stepped["h"], metrics={})
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8).float() / 255  # exact through PNG
    p = Predictor(str(pkg), device="cpu", settings={"box_score_thresh": 0.0, "box_detections_per_img": PER_IMAGE})
    assert p.pkg.settings["box_score_threshold"] == 0.0 and p.pkg.settings["box_detections_per_image"] == PER_IMAGE
    assert p.pkg.settings["min_size"] == SIZE and p.pkg.settings["max_size"] == SIZE
    (response,) = p.predict_images([_png(image)])
    assert set(response) == {"boxes"}
    boxes = response["boxes"]
    assert 1 <= len(boxes) <= PER_IMAGE
    assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
    for b in boxes:
        assert set(b) == ({"box", "label", "score", "polygon"} if stepped["seg"] else {"box", "label", "score"})
        c = b["box"]
        assert 0 <= c["topX"] <= c["bottomX"] <= 1 and 0 <= c["topY"] <= c["bottomY"] <= 1
        assert b["label"] in CLASSES and 0 <= b["score"] <= 1
        if stepped["seg"]:
            assert isinstance(b["polygon"], list)
            for part in b["polygon"]:
                assert len(part) % 2 == 0 and len(part) >= 6 and all(0 <= v <= 1 for v in part)
    # the package holds the *trained* weights (batch-norm statistics included): same detections as in memory
    with torch.no_grad():
        (out,) = stepped["model"]([image])
    expected = format_detections(out, SIZE, SIZE, CLASSES, p.pkg.settings, segmentation=stepped["seg"])
    assert [(b["label"], b["box"]) for b in boxes] == [(b["label"], b["box"]) for b in expected["boxes"]]
    assert [b["score"] for b in boxes] == pytest.approx([b["score"] for b in expected["boxes"]], abs=1e-5)

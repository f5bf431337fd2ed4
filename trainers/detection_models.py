"""The built-in detectors of §5.1: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN on ResNet FPN backbones.

Each ``model_name`` maps to one entry (family + ResNet depth), registered by name like the classifiers in
``trainers.models``. The box inference settings (§6.5 / §9.5: ``min_size``, ``max_size``,
``box_score_threshold``, ``nms_iou_threshold``, ``box_detections_per_image``) are constructor arguments
of torchvision's detectors, so a detector is built *from* the settings and the weights loaded into it:
changing a deployment's settings needs no retraining and no weight surgery.

Class indices: 0 is background for every family (torchvision's convention for R-CNNs; RetinaNet is
given the same layout so that one label mapping serves all): model label ``i`` is ``classes[i - 1]``.

Weights: random initialisation, a path / fsspec URI (``load_pretrained`` skips tensors whose shape
differs, i.e. the class heads), or the hub's COCO weights when downloads are allowed (only the ResNet-50
variants have them in torchvision).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from trainers.errors import VisionsweepError


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    family: str  # fasterrcnn | retinanet | maskrcnn
    depth: int  # ResNet depth of the FPN backbone


_REGISTRY: dict[str, DetectorEntry] = {}


def register(entry: DetectorEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"detector {entry.name} registered twice")
    _REGISTRY[entry.name] = entry


for _family in ("fasterrcnn", "maskrcnn"):
    for _depth in (18, 34, 50, 101, 152):
        register(DetectorEntry(f"{_family}_resnet{_depth}_fpn", _family, _depth))
register(DetectorEntry("retinanet_resnet50_fpn", "retinanet", 50))


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def get_detector_entry(name: str) -> DetectorEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VisionsweepError(f"unknown detection model {name!r}; expected one of {', '.join(list_detectors())}") from None


def detector_kwargs(settings: dict[str, Any]) -> tuple[dict[str, int], float, float, int]:
    """(resize arguments, score threshold, NMS IoU threshold, detections per image) from §9.5 settings."""
    kw = {"min_size": int(settings["min_size"]), "max_size": int(settings["max_size"])}
    return (kw, float(settings["box_score_threshold"]), float(settings["nms_iou_threshold"]),
            int(settings["box_detections_per_image"]))


def build_detector(name: str, num_classes: int, settings: dict[str, Any],
                   weights: str | None = None, download: bool = False, trainable_layers: int = 5,
                   segmentation: bool = False) -> nn.Module:
    """A detector for ``num_classes`` object classes (plus background) with the given inference settings
    (canonical names, all present: the trial's hyperparameters or a loaded package's settings).
    YOLOv5 and MMDetection models come from ``trainers.mm_detectors`` with the same interface."""
    from trainers import hyperparameters as hp

    if name == "yolov5" or hp.model_backend(name) == "mmdetection":
        from trainers.mm_detectors import build_mm_detector

        return build_mm_detector(name, num_classes, settings, segmentation, weights, download)
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    import torchvision

    e = get_detector_entry(name)
    kw, score, nms, per_img = detector_kwargs(settings)
    n = num_classes + 1
    if download and not weights and e.depth == 50:
        # the hub's COCO weights, then fresh class heads for our classes
        hub = {"fasterrcnn": "fasterrcnn_resnet50_fpn", "maskrcnn": "maskrcnn_resnet50_fpn",
               "retinanet": "retinanet_resnet50_fpn"}[e.family]
        model = torchvision.models.get_model(hub, weights="DEFAULT", **kw)
        _replace_heads(model, e.family, n)
        _apply_postprocess(model, e.family, score, nms, per_img)
        return model
    backbone = torchvision.models.get_model(f"resnet{e.depth}", weights="DEFAULT" if download and not weights else None)
    if e.family == "retinanet":
        fpn = _resnet_fpn_extractor(backbone, trainable_layers, returned_layers=[2, 3, 4],
                                    extra_blocks=LastLevelP6P7(2048 if e.depth >= 50 else 512, 256))
        model = RetinaNet(fpn, num_classes=n, score_thresh=score, nms_thresh=nms, detections_per_img=per_img, **kw)
    else:
        fpn = _resnet_fpn_extractor(backbone, trainable_layers)
        cls = MaskRCNN if e.family == "maskrcnn" else FasterRCNN
        model = cls(fpn, num_classes=n, box_score_thresh=score, box_nms_thresh=nms, box_detections_per_img=per_img, **kw)
    if weights:
        from trainers.models import load_pretrained

        load_pretrained(model, weights)
    return model


def _replace_heads(model: nn.Module, family: str, n: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    if family == "retinanet":
        head = model.head.classification_head
        model.head.classification_head = RetinaNetClassificationHead(
            head.cls_logits.in_channels, head.num_anchors, n)
        return
    box = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, n)
    if family == "maskrcnn":
        mask = model.roi_heads.mask_predictor
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask.conv5_mask.in_channels, 256, n)


def _apply_postprocess(model: nn.Module, family: str, score: float, nms: float, per_img: int) -> None:
    if family == "retinanet":
        model.score_thresh, model.nms_thresh, model.detections_per_img = score, nms, per_img
    else:
        model.roi_heads.score_thresh, model.roi_heads.nms_thresh = score, nms
        model.roi_heads.detections_per_img = per_img


@contextlib.contextmanager
def score_threshold(model: nn.Module, value: float):
    """Temporarily change a detector's box score threshold: validation ranks every detection down to a low
    score for average precision (as COCO evaluation does), while inference keeps ``box_score_threshold``."""
    holder = model if hasattr(model, "score_thresh") and not hasattr(model, "roi_heads") else model.roi_heads
    old = holder.score_thresh
    holder.score_thresh = value
    try:
        yield
    finally:
        holder.score_thresh = old

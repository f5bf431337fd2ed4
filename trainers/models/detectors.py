"""The built-in detectors of §5.1: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN on ResNet FPN backbones.

Each ``model_name`` maps to one entry (family + ResNet depth), registered by name like the classifiers in
``trainers.models.classifiers``. The box inference settings (§6.5 / §9.5: ``min_size``, ``max_size``,
``box_score_threshold``, ``nms_iou_threshold``, ``box_detections_per_image``) are constructor arguments
of torchvision's detectors, so a detector is built *from* the settings and the weights loaded into it:
changing a deployment's settings needs no retraining and no weight surgery.

Class indices: 0 is background for every family (torchvision's convention for R-CNNs; RetinaNet is
given the same layout so that one label mapping serves all): model label ``i`` is ``classes[i - 1]``.

Weights (``trainers.models.weights`` finds them): torchvision's COCO weights for the ResNet-50 Faster R-CNN, RetinaNet
and Mask R-CNN (class heads re-initialised for the job's classes), the ImageNet ResNet under a fresh FPN and
heads for the other depths, a path / fsspec URI (a package; ``load_pretrained`` skips tensors whose shape
differs), or random initialisation. As torchvision's own builders do, a backbone that starts from pretrained
weights keeps its BatchNorm statistics frozen (``FrozenBatchNorm2d``): detectors train with two images a batch,
far too few for batch statistics. The choice is part of the architecture and recorded in the package
(``model.json``: ``architecture``), so a package is rebuilt the way it was trained.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from trainers.errors import VisionsweepError
from trainers.models.loading import load_pretrained
from trainers.models.weights.initial import InitialWeights, is_pretrained
from trainers.registry import Registry


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    family: str  # fasterrcnn | retinanet | maskrcnn
    depth: int  # ResNet depth of the FPN backbone


DETECTORS: Registry[DetectorEntry] = Registry("detection model", VisionsweepError)


def register(entry: DetectorEntry) -> None:
    DETECTORS.register(entry.name, entry)


for _family in ("fasterrcnn", "maskrcnn"):
    for _depth in (18, 34, 50, 101, 152):
        register(DetectorEntry(f"{_family}_resnet{_depth}_fpn", _family, _depth))
register(DetectorEntry("retinanet_resnet50_fpn", "retinanet", 50))


def list_detectors() -> list[str]:
    return DETECTORS.names()


def get_detector_entry(name: str) -> DetectorEntry:
    return DETECTORS.get(name)


def detector_kwargs(settings: dict[str, Any]) -> tuple[dict[str, int], float, float, int]:
    """(resize arguments, score threshold, NMS IoU threshold, detections per image) from §9.5 settings."""
    kw = {"min_size": int(settings["min_size"]), "max_size": int(settings["max_size"])}
    return (kw, float(settings["box_score_threshold"]), float(settings["nms_iou_threshold"]),
            int(settings["box_detections_per_image"]))


FROZEN_BN = "frozen_bn"


def detector_architecture(name: str, weights: Any) -> dict[str, Any]:
    """The architecture choices a new detector takes from what it starts from (``model.json``); none for a model of
    another family (YOLOv5, MMDetection)."""
    if name not in DETECTORS:
        return {}
    return {"backbone_norm": FROZEN_BN} if is_pretrained(weights) else {}


def create(name: str, *, num_classes: int, settings: dict[str, Any], weights=None,
           architecture: dict[str, Any] | None = None, segmentation: bool = False, package_folder=None,
           where: str = "model_name") -> nn.Module:
    """The family's builder for ``trainers.models.factory.create_model`` (a package's weights are loaded by
    ``trainers.package``)."""
    return build_detector(name, num_classes, settings, weights, segmentation=segmentation, architecture=architecture)


def build_detector(name: str, num_classes: int, settings: dict[str, Any], weights=None, trainable_layers: int = 5,
                   segmentation: bool = False, architecture: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (plus background) with the given inference settings
    (canonical names, all present: the trial's hyperparameters or a loaded package's settings).
    ``weights``: an ``InitialWeights``, a path (a package's weights) or None; ``architecture``: a package's
    recorded choices (default: those of a new model starting from ``weights``).
    YOLOv5 and MMDetection models come from ``trainers.models.openmmlab`` with the same interface; any family's
    model: ``trainers.models.factory.create_model``."""
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    e = get_detector_entry(name)
    arch = detector_architecture(name, weights) if architecture is None else architecture
    kw, score, nms, per_img = detector_kwargs(settings)
    n = num_classes + 1
    norm = FrozenBatchNorm2d if arch.get("backbone_norm") == FROZEN_BN else nn.BatchNorm2d
    backbone = torchvision.models.get_model(f"resnet{e.depth}", weights=None, norm_layer=norm)
    init = weights.path if isinstance(weights, InitialWeights) else weights
    trusted = isinstance(weights, InitialWeights) and weights.verified
    if init and isinstance(weights, InitialWeights) and weights.target == "backbone":
        try:
            load_pretrained(backbone, init, trusted=trusted)  # ImageNet ResNet; its fc is dropped below
            init = None
        except VisionsweepError:
            if weights.source != "explicit":
                raise  # a published backbone file that does not fit its ResNet
            # visionsweep.pretrained_weights may name a whole detector's weights: loaded below
    if e.family == "retinanet":
        # torchvision's RetinaNet (and its COCO weights): P6 from the FPN's P5, 256 channels in and out
        fpn = _resnet_fpn_extractor(backbone, trainable_layers, returned_layers=[2, 3, 4],
                                    extra_blocks=LastLevelP6P7(256, 256))
        model = RetinaNet(fpn, num_classes=n, score_thresh=score, nms_thresh=nms, detections_per_img=per_img, **kw)
    else:
        fpn = _resnet_fpn_extractor(backbone, trainable_layers)
        cls = MaskRCNN if e.family == "maskrcnn" else FasterRCNN
        model = cls(fpn, num_classes=n, box_score_thresh=score, box_nms_thresh=nms, box_detections_per_img=per_img,
                    **kw)
    if init:
        # COCO weights or a package: class heads of another shape stay new
        load_pretrained(model, init, trusted=trusted)
    return model


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

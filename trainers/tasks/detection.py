"""Object detection and instance segmentation (SPEC §1, §2.3, §6.5, §7, §9.5) on torchvision's detectors.

A sample is ``(image, target)``: the image a float CHW tensor in [0, 1] at its own size (torchvision's
detectors normalise and resize to ``min_size``/``max_size`` inside the model, as in torchvision's
detection references), the target ``{"boxes": xyxy pixels, "labels": 1-based class ids, "iscrowd",
["masks"]}``. The loss is the sum of the detector's own losses (RPN + box head [+ mask head], or
RetinaNet's focal and box-regression losses).

Training augmentations (§7.1, with ``torchvision.transforms.v2`` and ``tv_tensors`` so boxes and masks
move with the image): expand (zoom out), random crop around the boxes (IoU crop) and horizontal flip;
``advanced_settings.apply_automl_train_augmentations: false`` turns the three off (§7.2). Crowd boxes
stay in the data and in the validation targets, where the metric ignores them as COCO does, but are not
training targets: a crowd region is not one object to regress to.

Small-object tiling (``tile_grid_size``): training sees every image whole *and* as each tile of the
grid (``trainers.tiling``); validation and inference predict the whole image and every tile and merge
the predictions with NMS at ``tile_predictions_nms_threshold``.

Validation: ``mean_average_precision`` and per-class AP / precision / recall from
``trainers.detection_metrics`` (COCO's evaluator) over the *whole* validation set: each worker predicts
its slice and the predictions are gathered. ``validation_loss`` (with ``log_validation_loss``, the default)
is the detector's own training loss over the validation images, computed by its loss branches with BatchNorm
and dropout as in evaluation (the detectors compute losses only in training mode); whole images, not tiles.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from trainers import hyperparameters as hp
from trainers.data.datasets import ImageDataset
from trainers.detection_metrics import decode_masks, detection_metrics, encode_masks
from trainers.errors import TrainingError, VisionsweepError
from trainers.models.boxes import drop_degenerate
from trainers.models.detectors import detector_architecture, get_detector_entry, score_threshold
from trainers.models.loading import freeze_prefix_groups
from trainers.polygons import polygons_to_mask
from trainers.tasks.base import Task
from trainers.tasks.graphs import DETECTION_INPUT, OnnxGraph, PerImage, YoloGraph
from trainers.tasks.yolo_augment import YoloTrainSet
from trainers.tiling import crop_target, parse_grid, predict_tiled, tile_windows
from trainers.validation_outputs import detection_outputs
from trainers.workers import Runtime

log = logging.getLogger(__name__)

# layers_to_freeze for the resnet_backbone family (§6.3); the stem's batch norm goes with its conv
RESNET_BACKBONE_GROUPS = (("backbone.body.conv1.", "backbone.body.bn1."), "backbone.body.layer1.",
                          "backbone.body.layer2.", "backbone.body.layer3.", "backbone.body.layer4.")
MASK_THRESHOLD = 0.5  # mask probability that counts as inside the instance, for the validation metric
# AP ranks every detection down to this score (COCO evaluation's usual floor); precision and recall are
# reported for the detections a user would get, at box_score_threshold
AP_SCORE_FLOOR = 0.05
# RandomZoomOut fills the new border with the ImageNet mean colour (masks with 0), as torchvision's references do
_FILL = (124, 116, 104)


# §9.5 settings of instance segmentation that are not training hyperparameters (defaults of the table)
SEGMENTATION_SETTINGS = {"mask_pixel_score_threshold": 0.5, "max_number_of_polygon_points": 100,
                         "export_as_image": False, "image_type": "JPG"}


def collate_lists(batch: list) -> tuple:
    """Detectors take a list of differently sized images and a list of targets, not stacked tensors."""
    return tuple(zip(*batch))


def is_openmmlab(model_name: str) -> bool:
    """YOLOv5 (mmyolo) and MMDetection models train through ``trainers.models.openmmlab``."""
    return model_name == "yolov5" or hp.model_backend(model_name) == "mmdetection"


class DetectionTask(Task):
    name = hp.DETECTION
    primary_metric = "mean_average_precision"
    channels_last_ok = False
    segmentation = False
    collate = staticmethod(collate_lists)
    holdout_score = "boxes"

    # --- before training ---------------------------------------------------------------------------
    def check(self, h: dict[str, Any]) -> None:
        if is_openmmlab(h["model_name"]):
            from trainers.models.openmmlab import input_size_ok, require

            require(yolo=h["model_name"] == "yolov5")
            input_size_ok(h)
            if h["model_name"] == "yolov5":
                return
        else:
            get_detector_entry(h["model_name"])
        if h["min_size"] > h["max_size"]:
            raise TrainingError(f"min_size ({h['min_size']}) must be <= max_size ({h['max_size']})")

    def architecture(self, h, weights):
        return detector_architecture(h["model_name"], weights)

    def freeze(self, model, h) -> None:
        groups = RESNET_BACKBONE_GROUPS
        if is_openmmlab(h["model_name"]):
            from trainers.models.openmmlab import freeze_groups

            groups = freeze_groups(model, h["model_name"])
        freeze_prefix_groups(model, h["model_name"], groups, h.get("layers_to_freeze"))

    def train_dataset(self, h, data):
        advanced = h.get("advanced_settings") or {}
        augment = hp.as_bool(advanced.get("apply_automl_train_augmentations", True))
        if h["model_name"] == "yolov5":  # §7.1: mosaic, random affine, flip; letterboxed to image_size

            base = ImageDataset(data.train, DetectionSample(self, train=True, augment=False), data.store)
            return YoloTrainSet(base, h["image_size"], mosaic=hp.as_bool(advanced.get("apply_mosaic_for_yolo", True)),
                                augment=augment)
        grid = parse_grid(h.get("tile_grid_size"))
        sample = DetectionSample(self, train=True, augment=augment, grid=grid, overlap=h["tile_overlap_ratio"])
        return ImageDataset(data.train, sample, data.store, views=1 + (grid[0] * grid[1] if grid else 0))

    def valid_dataset(self, h, data) -> ImageDataset:
        return ImageDataset(data.valid, DetectionSample(self, train=False), data.store)

    # --- training and evaluation -----------------------------------------------------------------
    def loss(self, net, batch, rt: Runtime):
        images, targets = batch
        images = [im.to(rt.device, non_blocking=True) for im in images]
        targets = [{k: v.to(rt.device, non_blocking=True) for k, v in t.items() if torch.is_tensor(v)}
                   for t in targets]
        with rt.autocast():
            losses = net(images, targets)
        return sum(v.float() for v in losses.values()), len(images)

    @torch.no_grad()
    def predict(self, model: nn.Module, images: list[torch.Tensor], h: dict[str, Any], rt: Runtime) -> list[dict]:
        """Raw detector outputs (full-image pixel coordinates) for a list of images, tiled when configured."""

        grid = parse_grid(h.get("tile_grid_size"))
        with rt.autocast():
            if grid is None:
                outs = model(images)
            else:
                outs = [predict_tiled(model, im, grid, float(h["tile_overlap_ratio"]),
                                      float(h["tile_predictions_nms_threshold"]), int(h["box_detections_per_image"]))
                        for im in images]
        # every detector's output, for metrics, reports and serving alike: no box outside the image, none of no area
        return [drop_degenerate(o, *im.shape[-2:]) for o, im in zip(outs, images)]

    # --- what leaves with the model ----------------------------------------------------------------
    #: §9.5 settings a package holds that are training hyperparameters of the box tasks
    INFERENCE_KEYS = ("min_size", "max_size", "box_score_threshold", "nms_iou_threshold", "box_detections_per_image",
                      "image_size", "model_size", "tile_grid_size", "tile_overlap_ratio",
                      "tile_predictions_nms_threshold")
    #: §9.5 settings of this task that are not training hyperparameters (defaults of the table)
    EXTRA_SETTINGS: dict[str, Any] = {}

    @classmethod
    def inference_settings(cls, h: dict[str, Any]) -> dict[str, Any]:
        return {**{k: h[k] for k in cls.INFERENCE_KEYS if k in h}, **cls.EXTRA_SETTINGS}

    def onnx_graph(self, pkg, batch_size: int, size, normalization: bool, where: str):
        """torchvision's detectors: input ``input`` (B, 3, H, W) -> per image ``boxes_i``, ``labels_i``, ``scores_i``
        (and ``masks_i``); YOLOv5: input ``input`` (B, 3, S, S) -> per image ``output_i`` (n, 6). Normalisation is
        in the graph either way."""
        name = pkg.model_name
        if name == "yolov5":
            return _yolo_graph(pkg, batch_size)
        if hp.model_backend(name) != "builtin":
            return super().onnx_graph(pkg, batch_size, size, normalization, where)
        if pkg.settings.get("tile_grid_size"):
            raise VisionsweepError(
                f"{where}: cannot export {name} with tile_grid_size {pkg.settings['tile_grid_size']}: tiled "
                "inference (tiles, then a class-wise NMS merge) is not part of the model's graph; export a "
                "package trained without tiling")
        h, w = size or DETECTION_INPUT
        masks = self.segmentation
        names = ["boxes", "labels", "scores"] + (["masks"] if masks else [])
        meta_input = {"name": "input", "shape": [batch_size, 3, h, w], "layout": "NCHW", "channels": "RGB",
                      "range": "[0, 1]", "normalization_in_graph": True,
                      "resize_in_graph": {"min_size": pkg.settings.get("min_size"),
                                          "max_size": pkg.settings.get("max_size")}}
        meta_outputs = [{"name": f"{n}_i", "meaning": m} for n, m in (
            ("boxes", "(n, 4) x0, y0, x1, y1 in input pixels"), ("labels", "(n,) index into labels"),
            ("scores", "(n,) best first, >= box_score_threshold"),
            *((("masks", "(n, 1, H, W) per-pixel probabilities"),) if masks else ()))]
        return OnnxGraph(PerImage(pkg.model, masks), torch.rand(batch_size, 3, h, w), ["input"],
                         [f"{n}_{i}" for i in range(batch_size) for n in names], None, meta_input, meta_outputs,
                         rows=True)

    def labelled_sample(self, settings: dict[str, Any]):
        return DetectionSample(self, train=False)

    def scoring_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        # evaluate ranks every detection down to the AP floor; a graph bakes its threshold in
        return {"box_score_threshold": min(AP_SCORE_FLOOR, float(settings["box_score_threshold"]))}

    def unmeasurable(self, model_name: str) -> str | None:
        """torchvision's detectors (``boxes_i``, ``labels_i``, ``scores_i`` graphs) and YOLOv5 (``output_i`` (n, 6)
        rows) can be measured; MMDetection models have no ONNX export here (OpenMMLab's mmdeploy makes theirs)."""
        if model_name != "yolov5" and hp.model_backend(model_name) != "builtin":
            return super().unmeasurable(model_name)
        return None

    def onnx_model(self, session, meta: dict[str, Any], where: str):
        if self.unmeasurable(meta["model_name"]):
            return super().onnx_model(session, meta, where)
        from trainers.tasks.ort import OrtDetections, OrtYolo

        return (OrtYolo if meta["model_name"] == "yolov5" else OrtDetections)(session, meta)

    def input_transform(self, settings: dict[str, Any], where: str):
        try:
            parse_grid(settings.get("tile_grid_size"))
        except ValueError as e:
            raise VisionsweepError(f"{where}: inference setting tile_grid_size: {e}") from None
        return None

    def _loss_target(self, t: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """A validation target as training gives it: crowd boxes left out, masks decoded."""
        keep = t["iscrowd"] == 0
        out = {"boxes": t["boxes"][keep].to(device), "labels": t["labels"][keep].to(device)}
        if self.segmentation:
            rles = [r for r, k in zip(t["masks"], keep.tolist()) if k]
            out["masks"] = torch.from_numpy(decode_masks(rles, *t["size"])).to(device)
        return out

    @torch.no_grad()
    def validation_loss(self, model: nn.Module, loader, rt: Runtime) -> float | None:
        """The detector's own training loss (§14 ``log_validation_loss``) over the validation images: its loss
        branches run (the detectors compute losses only in training mode) with BatchNorm and dropout as in
        evaluation, so nothing about the model changes. None, logged once, where a model cannot compute it."""
        if getattr(self, "_no_validation_loss", False):
            return None
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()
        totals = torch.zeros(2, device=rt.device)
        try:
            for images, targets in loader:
                images = [im.to(rt.device, non_blocking=True) for im in images]
                with rt.autocast():
                    losses = model(images, [self._loss_target(t, rt.device) for t in targets])
                totals[0] += sum(v.float() for v in losses.values()) * len(images)
                totals[1] += len(images)
        except Exception as e:  # noqa: BLE001 - said once, then the evaluations go on without it
            log.warning("validation_loss: %s cannot compute its loss on the validation images (%s); no "
                        "validation_loss is reported", type(model).__name__, str(e).splitlines()[0][:200])
            self._no_validation_loss = True
            return None
        finally:
            model.eval()
        loss_sum, seen = rt.workers.sum(totals).tolist()
        return loss_sum / max(1.0, seen)

    @torch.no_grad()
    def evaluate(self, net, loader, rt: Runtime, h) -> dict[str, Any]:
        model = getattr(net, "module", net)  # predictions need no DDP: each worker predicts its own slice
        loss = self.validation_loss(model, loader, rt) if h.get("log_validation_loss", True) else None
        model.eval()
        preds, gts = [], []
        floor = min(AP_SCORE_FLOOR, float(h["box_score_threshold"]))
        for images, targets in loader:
            with score_threshold(model, floor):
                outs = self.predict(model, [im.to(rt.device, non_blocking=True) for im in images], h, rt)
            for out, t in zip(outs, targets):
                p = {"boxes": out["boxes"].float().cpu().numpy(), "labels": out["labels"].cpu().numpy(),
                     "scores": out["scores"].float().cpu().numpy()}
                if self.segmentation:
                    p["masks"] = encode_masks((out["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy())
                preds.append(p)
                gts.append({k: (v.numpy() if torch.is_tensor(v) else v) for k, v in t.items()})
        parts = rt.workers.all_gather((preds, gts))
        all_preds = [p for part in parts for p in part[0]]
        all_gts = [g for part in parts for g in part[1]]
        # the report's drawn samples come from these, in the set's order (worker r held images r, r + world, ...)
        order = np.argsort([r + i * len(parts) for r, part in enumerate(parts) for i in range(len(part[0]))],
                           kind="stable")
        self.validation_outputs = detection_outputs([all_preds[i] for i in order],
                                                    [tuple(all_gts[i]["size"]) for i in order],
                                                    float(h["box_score_threshold"]), self.segmentation)
        kw = dict(metric_type=h["validation_metric_type"], iou_threshold=h["validation_iou_threshold"],
                  segmentation=self.segmentation)
        out = detection_metrics(all_preds, all_gts, self.classes, **kw)
        if out:  # precision and recall of what inference returns: the detections at box_score_threshold
            kept = detection_metrics([_above(p, float(h["box_score_threshold"])) for p in all_preds], all_gts,
                                     self.classes, **kw)
            out["precision"], out["recall"] = kept["precision"], kept["recall"]
            for name, per in out.get("per_label_metrics", {}).items():
                k = kept.get("per_label_metrics", {}).get(name, {})
                per["precision"], per["recall"] = k.get("precision", 0.0), k.get("recall", 0.0)
        out["validation_images"] = len(all_gts)
        if loss is not None:
            out["validation_loss"] = loss
        return out


def _above(pred: dict[str, Any], threshold: float) -> dict[str, Any]:
    keep = pred["scores"] >= threshold
    out = {k: v[keep] for k, v in pred.items() if k != "masks"}
    if "masks" in pred:
        out["masks"] = [m for m, k in zip(pred["masks"], keep) if k]
    return out


def _yolo_graph(pkg, batch_size: int) -> OnnxGraph:
    size = int(pkg.settings.get("image_size", 640))
    meta_input = {"name": "input", "shape": [batch_size, 3, size, size], "layout": "NCHW", "channels": "RGB",
                  "range": "[0, 1]", "normalization_in_graph": True,
                  "letterbox": f"resize the long side to {size}, pad right and bottom with 114/255 to a square"}
    meta_outputs = [{"name": "output_i", "meaning": "(n, 6) x0, y0, x1, y1 (letterboxed pixels), conf, "
                                                    "class_id (index into labels), after NMS"}]
    return OnnxGraph(YoloGraph(pkg.model, size, pkg.settings), torch.rand(batch_size, 3, size, size), ["input"],
                     [f"output_{i}" for i in range(batch_size)], None, meta_input, meta_outputs, rows=True)


class SegmentationTask(DetectionTask):
    name = hp.SEGMENTATION
    segmentation = True
    EXTRA_SETTINGS = SEGMENTATION_SETTINGS


class DetectionSample:
    """(image, record, view) -> (image tensor, target). A class, not a closure, so DataLoader workers can pickle it.

    ``view`` 0 is the whole image; ``view`` k > 0 is tile k - 1 of the grid (training with tiling).
    """

    def __init__(self, task: DetectionTask, train: bool, augment: bool = True,
                 grid: tuple[int, int] | None = None, overlap: float = 0.25):
        self.classes = task.index
        self.segmentation = task.segmentation
        self.train, self.augment, self.grid, self.overlap = train, augment, grid, overlap
        self._pipelines = None

    def target(self, record, width: int, height: int) -> dict[str, Any]:
        boxes = [b for b in record.label if not (self.train and b.is_crowd)]
        t: dict[str, Any] = {
            "boxes": torch.tensor([[b.top_x * width, b.top_y * height, b.bottom_x * width, b.bottom_y * height]
                                   for b in boxes], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.classes[b.label] + 1 for b in boxes], dtype=torch.int64),
            "iscrowd": torch.tensor([b.is_crowd for b in boxes], dtype=torch.int64),
        }
        if self.segmentation:
            masks = np.stack([polygons_to_mask([list(p) for p in b.polygon], height, width) for b in boxes]) \
                if boxes else np.zeros((0, height, width), dtype=bool)
            if self.train:
                t["masks"] = torch.from_numpy(masks.astype(np.uint8))
            else:
                t["masks"] = encode_masks(masks)
        if not self.train:
            t["size"] = (height, width)
        return t

    def __call__(self, image, record, view: int):
        from torchvision.transforms.v2 import functional as F

        img = F.pil_to_tensor(image.convert("RGB"))
        target = self.target(record, image.width, image.height)
        if not self.train:
            return F.to_dtype(img, torch.float32, scale=True), target
        if view > 0:
            x0, y0, x1, y1 = tile_windows(image.width, image.height, self.grid, self.overlap)[view - 1]
            img = img[:, y0:y1, x0:x1]
            target = crop_target(target, (x0, y0, x1, y1))
        img, target = self._transform(img, target)
        return img, target

    def _transform(self, img: torch.Tensor, target: dict[str, Any]):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        if self._pipelines is None:
            fill = {tv_tensors.Image: _FILL, "others": 0}
            tail = [v2.SanitizeBoundingBoxes(), v2.ToDtype(torch.float32, scale=True)]
            if self.augment:
                with_boxes = v2.Compose([v2.RandomZoomOut(fill=fill, side_range=(1.0, 2.0), p=0.5),
                                         v2.RandomIoUCrop(), v2.RandomHorizontalFlip(), *tail])
                # the IoU crop needs a box to crop around: negatives get the other two
                negatives = v2.Compose([v2.RandomZoomOut(fill=fill, side_range=(1.0, 2.0), p=0.5),
                                        v2.RandomHorizontalFlip(), *tail])
            else:  # §7.2: normalisation and resize (inside the model) only
                with_boxes = negatives = v2.Compose(tail)
            self._pipelines = (with_boxes, negatives)
        h, w = img.shape[-2:]
        wrapped = {"boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)),
                   "labels": target["labels"], "iscrowd": target["iscrowd"]}
        if "masks" in target:
            wrapped["masks"] = tv_tensors.Mask(target["masks"])
        pipeline = self._pipelines[0] if len(target["boxes"]) else self._pipelines[1]
        img, out = pipeline(tv_tensors.Image(img), wrapped)
        out = {k: v.as_subclass(torch.Tensor) for k, v in out.items()}
        return img.as_subclass(torch.Tensor), out

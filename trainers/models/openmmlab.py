"""MMDetection 3.x models (§5.3) and YOLOv5 (§5.2, §6.6, through OpenMMLab's mmyolo) behind the interface of
torchvision's detectors, so the detection task, tiling, metrics, packages and serving run them unchanged.

The interface (``MMDetector``): in training mode ``model(images, targets) -> {loss name: tensor}``; in eval
mode ``model(images) -> [{"boxes", "labels", "scores"[, "masks"]}]`` per image, in the input's pixels,
labels 1-based (0 is background, torchvision's layout), masks as ``(n, 1, H, W)`` probabilities. Images are
float CHW tensors in [0, 1] at their own size. The adapter does what OpenMMLab's dataset pipelines would:

* resize: keep-ratio to ``min_size``/``max_size`` (MMDetection models, like the torchvision detectors), or
  letterbox to ``image_size`` (YOLOv5, §7.1: resize the long side, pad to a square of grey 114);
* build ``DetDataSample`` s (or mmyolo's packed ``bboxes_labels`` for YOLOv5's loss) and run the model's
  own data preprocessor (normalisation, padding to its size divisor), fed RGB;
* YOLOv5 ``multi_scale``: each training batch at a random size in [0.5, 1.5] x ``image_size`` (multiple of 32).

Models are named by the model zoo's config name (``atss_r50_fpn_1x_coco``), the metafile name or the curated
``mmd-3x-`` spelling; the configs ship inside the mmdet and mmyolo wheels. ``num_classes`` is set throughout
the model config, SyncBN becomes BN (one process per worker here), ``Pretrained`` initialisation (mmengine's own
downloads) is dropped: the zoo's COCO checkpoint of the model comes through ``trainers.models.weights`` (found, fetched
once per node and checked against its published hash), and the test-time config follows the §9.5 settings.
``yolov5`` also starts from ultralytics' release files (``yolov5s.pt`` ...), recognised by their content, read
without running their code and converted to mmyolo's names by mmyolo's own converter
(``trainers.models.weights.ultralytics``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainers.errors import VisionsweepError, close_names
from trainers.models.boxes import drop_degenerate
from trainers.models.loading import load_pretrained, load_state
from trainers.models.names import MMDET_PREFIX
from trainers.models.weights import ultralytics
from trainers.models.weights.initial import InitialWeights

log = logging.getLogger(__name__)

INSTALL = "make openmmlab (or: python -m cluster.install_openmmlab), which builds mmcv once per machine"
YOLO = "yolov5"
# §5.2 model_size -> mmyolo's YOLOv5 v6.1 configs (deepen/widen 0.33/0.5, 0.67/0.75, 1/1, 1.33/1.25)
YOLO_CONFIGS = {
    "small": "yolov5_s-v61_syncbn_fast_8xb16-300e_coco",
    "medium": "yolov5_m-v61_syncbn_fast_8xb16-300e_coco",
    "large": "yolov5_l-v61_syncbn_fast_8xb16-300e_coco",
    "xlarge": "yolov5_x-v61_syncbn_fast_8xb16-300e_coco",
}
YOLO_PAD = 114.0  # letterbox grey, as YOLOv5 pads
YOLO_BASE_CLASSES, YOLO_BASE_SIZE = 80, 640  # what mmyolo's configs balance YOLOv5's losses for (COCO at 640 px)
TEST_SCORE_FLOOR = 0.001  # the model keeps candidates down to this; the adapter applies score_thresh
PAD_DIVISOR = 32  # batches are padded to a multiple of the largest feature-map stride


def require(yolo: bool = False) -> None:
    """Fail before any trial, with the install command, when the OpenMMLab extra is missing."""
    missing = []
    for mod in ("mmengine", "mmcv.ops", "mmdet") + (("mmyolo",) if yolo else ()):
        try:
            __import__(mod)
        except ImportError as e:
            missing.append(f"{mod} ({str(e).splitlines()[0][:120]})")
    if missing:
        what = "yolov5 (mmyolo, GPL-3.0)" if yolo else "MMDetection models"
        raise VisionsweepError(f"{what} need the OpenMMLab extra, which is not installed here: "
                               f"missing {', '.join(missing)}. Install it with: {INSTALL}")


def _normal(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", re.sub(r"(\d)x(\d)", r"\1xb\2", s.lower()))


@functools.lru_cache(maxsize=2)
def _zoo(package: str) -> tuple[dict[str, Path], dict[Path, str]]:
    """(name -> config file, config file -> its COCO checkpoint URL) from the zoo's configs and metafiles."""
    import importlib

    import yaml

    root = Path(importlib.import_module(package).__file__).parent / ".mim" / "configs"
    index: dict[str, Path] = {}
    weights: dict[Path, str] = {}
    for p in root.rglob("*.py"):
        if "_base_" not in p.parts:
            index.setdefault(p.stem, p)
    for meta in root.rglob("metafile.yml"):
        try:
            doc = yaml.safe_load(meta.read_text())
        except yaml.YAMLError:
            continue
        models = doc.get("Models") or [] if isinstance(doc, dict) else doc if isinstance(doc, list) else []
        for m in models:
            if not isinstance(m, dict):
                continue
            cfg = root.parent / m.get("Config", "")
            if m.get("Name") and cfg.is_file():
                index.setdefault(m["Name"], cfg)
                if isinstance(m.get("Weights"), str):
                    weights.setdefault(cfg, m["Weights"])
    for key, p in list(index.items()):
        index.setdefault(_normal(key), p)
    return index, weights


def checkpoint_url(name: str, settings: dict[str, Any]) -> str | None:
    """The zoo's COCO checkpoint of a model (its metafile's ``Weights``): the model's entry in the weights manifest."""
    # the config first: it says when the OpenMMLab extra is missing, before the zoo's packages are imported
    if name == YOLO:
        path = yolo_config_path(str(settings.get("model_size", "medium")))
        return _zoo("mmyolo")[1].get(path)
    path = config_path(name)
    return _zoo("mmdet")[1].get(path)


def config_path(name: str) -> Path:
    """The config file of a model zoo name (``mmd-3x-`` prefix optional); the error lists close names."""
    require()
    bare = name.removeprefix(MMDET_PREFIX)
    index = _zoo("mmdet")[0]
    found = index.get(bare) or index.get(_normal(bare))
    if found is None:
        close = close_names(bare, [k for k in index if "_" in k or "-" in k])
        raise VisionsweepError(f"model_name {name}: no MMDetection config of that name in mmdet "
                               f"{__import__('mmdet').__version__}'s model zoo"
                               + (f"; close names: {', '.join(close)}" if close else ""))
    return found


def yolo_config_path(size: str) -> Path:
    require(yolo=True)
    size = {"extra_large": "xlarge"}.get(size, size)
    return _zoo("mmyolo")[0][YOLO_CONFIGS[size]]


def _walk(node: Any, fn) -> Any:
    """Apply ``fn`` to every dict of a config tree (post-order), returning the rewritten tree."""
    if isinstance(node, dict):
        node = {k: _walk(v, fn) for k, v in node.items()}
        return fn(node)
    if isinstance(node, (list, tuple)):
        return type(node)(_walk(v, fn) for v in node)
    return node


def model_config(name: str, num_classes: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The model part of a zoo config, rewritten for ``num_classes`` and the §9.5 settings."""
    from mmengine.config import Config, ConfigDict

    path = yolo_config_path(str(settings.get("model_size", "medium"))) if name == YOLO else config_path(name)
    cfg = Config.fromfile(str(path)).to_dict()["model"]

    def fix(d: dict) -> dict:
        if "num_classes" in d:
            d["num_classes"] = num_classes
        if d.get("type") in ("SyncBN", "MMSyncBN"):
            d["type"] = "BN"
        init = d.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            d["init_cfg"] = None  # the model's weights come through trainers.models.weights, not mmengine's downloader
        return d

    cfg = _walk(cfg, fix)
    pre = cfg.setdefault("data_preprocessor", {})
    # The zoo's pipelines load images as BGR; a preprocessor that converts (bgr_to_rgb) hands the model RGB, one
    # that does not (RTMDet, YOLOX: BGR means and std) hands it BGR. The adapter feeds RGB, so the channels are
    # flipped exactly where the model was trained on BGR: its pretrained weights see what they were made for.
    wants_rgb = bool(pre.get("bgr_to_rgb") or pre.get("rgb_to_bgr"))
    pre["bgr_to_rgb"], pre["rgb_to_bgr"] = False, not wants_rgb
    pre.pop("batch_augments", None)  # multi-scale batch resizing is ours (multi_scale)
    if name != YOLO:
        # The zoo's data pipelines pad each image (RTMDet: to 640 x 640) before the preprocessor, whose own
        # pad_size_divisor is then often 1; the adapter resizes instead, so the batch is padded here to the
        # largest stride of the feature pyramids (32): a CSPNeXt-PAFPN upsamples and concatenates P5 with P4.
        pre["pad_size_divisor"] = max(int(pre.get("pad_size_divisor") or 1), PAD_DIVISOR)
    if name == YOLO:
        _scale_yolo_losses(cfg, num_classes, int(settings.get("image_size", YOLO_BASE_SIZE)))
    _set_test_cfg(cfg, settings)
    return ConfigDict(cfg)  # the heads read their train/test configs by attribute


@functools.lru_cache(maxsize=64)
def optimizer_defaults(name: str, batch_size: int) -> dict[str, Any]:
    """An MMDetection model's own optimiser settings (its zoo config's ``optim_wrapper``), the learning rate
    scaled to ``batch_size`` by the config's ``auto_scale_lr`` rule (linear in the batch, base 16 images);
    {} where the extra is missing or the optimiser is not one of §6.1's."""
    try:
        from mmengine.config import Config

        cfg = Config.fromfile(str(config_path(name)))
    except (VisionsweepError, ImportError):
        return {}
    opt = dict((cfg.get("optim_wrapper") or {}).get("optimizer") or {})
    kind = {"SGD": "sgd", "AdamW": "adamw", "Adam": "adam"}.get(str(opt.get("type")))
    if kind is None or "lr" not in opt:
        return {}
    base = int((cfg.get("auto_scale_lr") or {}).get("base_batch_size") or 16)
    out: dict[str, Any] = {"optimizer": kind, "learning_rate": float(opt["lr"]) * batch_size / base}
    if "weight_decay" in opt:
        out["weight_decay"] = float(opt["weight_decay"])
    if kind == "sgd" and "momentum" in opt:
        out["momentum"] = float(opt["momentum"])
    if kind != "sgd" and "betas" in opt:
        out["beta1"], out["beta2"] = (float(b) for b in opt["betas"])
    return out


def _scale_yolo_losses(cfg: dict, num_classes: int, image_size: int) -> None:
    """YOLOv5 balances its three losses for the job's classes and image size: the classification loss by
    ``num_classes / 80``, the objectness loss by ``(image_size / 640) ** 2`` (ultralytics' train.py scales its
    ``hyp['cls']`` and ``hyp['obj']`` so). mmyolo's configs compute these weights from their own variables when the
    file is read, for COCO's 80 classes at 640 px; setting ``num_classes`` afterwards leaves them at that: 3 tree
    classes at 256 px would weigh classification 27x and objectness 6x too much against the boxes, and the boxes
    then learn several times slower (bench/RESULTS.md, "Model quality")."""
    head = cfg.get("bbox_head") or {}
    if isinstance(head.get("loss_cls"), dict):
        head["loss_cls"]["loss_weight"] = float(head["loss_cls"]["loss_weight"]) * num_classes / YOLO_BASE_CLASSES
    if isinstance(head.get("loss_obj"), dict):
        head["loss_obj"]["loss_weight"] = float(head["loss_obj"]["loss_weight"]) * (image_size / YOLO_BASE_SIZE) ** 2


def _set_test_cfg(cfg: dict, settings: dict[str, Any]) -> None:
    test = cfg.get("test_cfg")
    if not isinstance(test, dict):
        return
    target = test.get("rcnn") if isinstance(test.get("rcnn"), dict) else test
    if "score_thr" in target:
        target["score_thr"] = TEST_SCORE_FLOOR
    if "max_per_img" in target and "box_detections_per_image" in settings:
        target["max_per_img"] = int(settings["box_detections_per_image"])
    nms = target.get("nms")
    if isinstance(nms, dict) and "iou_threshold" in nms:
        nms["iou_threshold"] = float(settings["nms_iou_threshold"])


class MMDetector(nn.Module):
    """An OpenMMLab detector with torchvision's detector interface (see the module docstring)."""

    def __init__(self, model: nn.Module, name: str, settings: dict[str, Any], segmentation: bool = False):
        super().__init__()
        self.model = model
        self.name, self.yolo, self.segmentation = name, name == YOLO, segmentation
        self.score_thresh = float(settings["box_score_threshold"])
        self.detections_per_img = int(settings.get("box_detections_per_image", 300))
        if self.yolo:
            self.image_size = int(settings.get("image_size", 640))
            self.multi_scale = bool(int(settings.get("multi_scale", 0) or 0))
        else:
            self.min_size, self.max_size = int(settings["min_size"]), int(settings["max_size"])
            self.multi_scale = False

    # --- resizing --------------------------------------------------------------------------------
    def _scale(self, h: int, w: int) -> float:
        if self.yolo:
            return self.image_size / max(h, w)
        return min(self.min_size / min(h, w), self.max_size / max(h, w))

    def _resize(self, im: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        h, w = im.shape[-2:]
        s = self._scale(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(im[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] * 255.0
        return x, nw / w, nh / h

    def _samples(self, images, targets=None):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        inputs, samples = [], []
        for i, im in enumerate(images):
            x, sx, sy = self._resize(im)
            meta = {"img_shape": tuple(x.shape[-2:]), "ori_shape": tuple(im.shape[-2:]), "scale_factor": (sx, sy)}
            if self.yolo:  # letterbox: the resized image top-left in a square of grey
                pad = x.new_full((3, self.image_size, self.image_size), YOLO_PAD)
                pad[:, : x.shape[1], : x.shape[2]] = x
                x = pad
                meta["pad_param"] = [0.0, 0.0, 0.0, 0.0]
            ds = DetDataSample(metainfo=meta)
            if targets is not None:
                t = targets[i]
                gi = InstanceData()
                gi.bboxes = t["boxes"].float() * t["boxes"].new_tensor([sx, sy, sx, sy])
                gi.labels = t["labels"].long() - 1
                if self.segmentation and "masks" in t:
                    from mmdet.structures.mask import BitmapMasks

                    m = t["masks"].float()[None] if t["masks"].dim() == 2 else t["masks"].float()
                    m = F.interpolate(m[None], size=meta["img_shape"], mode="nearest")[0] if len(m) else \
                        m.new_zeros((0, *meta["img_shape"]))
                    gi.masks = BitmapMasks(m.bool().cpu().numpy(), *meta["img_shape"])
                ds.gt_instances = gi
            inputs.append(x)
            samples.append(ds)
        return inputs, samples

    # --- the torchvision interface ---------------------------------------------------------------
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            losses = self._yolo_loss(images, targets) if self.yolo else self._loss(images, targets)
            out = {}
            for k, v in losses.items():  # only losses count (mmengine's parse_losses rule), lists summed
                if "loss" in k:
                    out[k] = (sum(x.sum() for x in v) if isinstance(v, (list, tuple)) else v.sum())  # scalars
            return out
        return self._predict(images)

    def _loss(self, images, targets):
        inputs, samples = self._samples(images, targets)
        data = self.model.data_preprocessor({"inputs": inputs, "data_samples": samples}, True)
        return self.model.loss(data["inputs"], data["data_samples"])

    def _yolo_loss(self, images, targets):
        inputs, samples = self._samples(images, targets)
        x = torch.stack(inputs)
        rows = []
        for i, ds in enumerate(samples):
            gi = ds.gt_instances
            rows.append(torch.cat([gi.bboxes.new_full((len(gi.labels), 1), i), gi.labels[:, None].float(),
                                   gi.bboxes], 1))
        bl = torch.cat(rows) if rows else x.new_zeros((0, 6))
        if self.multi_scale:  # §6.6: ±50 % image size per batch, a multiple of the 32-pixel stride
            size = max(32, int(random.uniform(0.5, 1.5) * self.image_size) // 32 * 32)
            if size != x.shape[-1]:
                f = size / x.shape[-1]
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                bl = torch.cat([bl[:, :2], bl[:, 2:] * f], 1)
        data = self.model.data_preprocessor({"inputs": x, "data_samples": {"bboxes_labels": bl}}, True)
        return self.model.loss(data["inputs"], data["data_samples"])

    def _predict(self, images):
        inputs, samples = self._samples(images)
        data = self.model.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)
        results = self.model.predict(data["inputs"], data["data_samples"], rescale=True)
        outs = []
        for im, r in zip(images, results):
            p = r.pred_instances
            keep = p.scores >= self.score_thresh
            order = p.scores[keep].argsort(descending=True)[: self.detections_per_img]
            out = {"boxes": p.bboxes[keep][order].float(), "scores": p.scores[keep][order].float(),
                   "labels": p.labels[keep][order].long() + 1}
            if self.segmentation:
                h, w = im.shape[-2:]
                masks = p.masks[keep][order] if "masks" in p else torch.zeros((len(order), h, w), device=im.device)
                masks = torch.as_tensor(masks, device=im.device).float()
                out["masks"] = masks[:, None, :h, :w]
            outs.append(drop_degenerate(out, *im.shape[-2:]))  # boxes rescaled past the border, or of no area
        return outs


@contextlib.contextmanager
def _quiet_init():
    """mmengine logs every parameter's initialisation at INFO (hundreds of lines per model, on every trial and every
    package load): only its warnings pass while a model is built."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def create(name: str, *, num_classes: int, settings: dict[str, Any], weights=None, architecture=None,
           segmentation: bool = False, package_folder=None, where: str = "model_name") -> MMDetector:
    """The builder of the YOLOv5 and MMDetection families for ``trainers.models.factory.create_model`` (a package's
    weights are loaded by ``trainers.package``)."""
    return build_mm_detector(name, num_classes, settings, segmentation, weights)


def build_mm_detector(name: str, num_classes: int, settings: dict[str, Any], segmentation: bool = False,
                      weights=None) -> MMDetector:
    """``weights``: an ``InitialWeights`` (the zoo's COCO checkpoint: class heads re-initialised), a path (a
    package's weights, or any checkpoint) or None (random initialisation)."""
    require(yolo=name == YOLO)
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    cfg = model_config(name, num_classes, settings)
    if name == YOLO:
        from mmyolo.registry import MODELS
        from mmyolo.utils import register_all_modules as register_yolo

        register_yolo(init_default_scope=False)  # YOLOv5's detector, backbone, neck, head, preprocessor
        scope = "mmyolo"
    else:
        from mmdet.registry import MODELS

        scope = "mmdet"
    # config types name the zoo's own registry ("DetDataPreprocessor"): build inside its scope
    with DefaultScope.overwrite_default_scope(scope), _quiet_init():
        model = MODELS.build(cfg)
        model.init_weights()
    det = MMDetector(model, name, settings, segmentation)
    if weights is not None:
        init = weights.path if isinstance(weights, InitialWeights) else weights
        if name == YOLO and ultralytics.is_release(init):
            load_release(det, init, settings)
            return det
        # a zoo checkpoint keeps mmengine metadata beside its tensors: unpickled only once its hash matched
        trusted = isinstance(weights, InitialWeights) and weights.verified
        # a visionsweep package's weights carry the adapter's "model." prefix; a zoo checkpoint does not
        load_pretrained(det, init, add_prefix="model.", trusted=trusted)
    return det


def load_release(det: MMDetector, path: str, settings: dict[str, Any]) -> int:
    """An ultralytics YOLOv5 release file (``yolov5s.pt`` ...) into ``yolov5``: read without running its code and
    renamed by mmyolo's converter (``trainers.models.weights.ultralytics``); class heads for other than COCO's 80
    classes stay as initialised. Returns how many tensors were loaded."""
    state = ultralytics.mmyolo_state_dict(path, str(settings.get("model_size", "medium")))
    return load_state(det, state, path, add_prefix="model.")


def freeze_groups(model: nn.Module, name: str) -> list[tuple[str, ...]]:
    """``layers_to_freeze`` groups. YOLOv5: the ten backbone modules of ``yolov5_backbone`` (§6.3's
    ``model.0.`` ... ``model.9.``), in mmyolo's naming the stem, then each stage's conv and C3 block, and
    SPPF last. An MMDetection ResNet: its stem and four layers (other backbones have none)."""
    names = [n for n, _ in model.named_parameters()]
    if name == YOLO:
        cand = [("model.backbone.stem.",)] + [(f"model.backbone.stage{i}.{j}.",) for i in range(1, 5) for j in
                                              range(3 if i == 4 else 2)]
    else:
        cand = [("model.backbone.conv1.", "model.backbone.bn1.", "model.backbone.stem.")] + \
               [(f"model.backbone.layer{i}.",) for i in range(1, 5)]
    return [g for g in cand if any(n.startswith(g) for n in names)]


def input_size_ok(h: dict[str, Any]) -> None:
    if h["model_name"] == YOLO and int(h.get("image_size", 640)) % 32:
        raise VisionsweepError(f"image_size: YOLOv5 needs a multiple of 32, but got {h['image_size']}")



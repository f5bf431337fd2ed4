"""A model package -> an ONNX model with the managed service's conventions (SPEC §15), checked with onnxruntime.

Conventions (what a client of the service's ONNX models expects):

* classification: input ``input1`` (B, 3, crop, crop) -> ``output1`` logits (B, num_classes). B is a
  dynamic axis. Without ``enable_onnx_normalization`` the input is the normalised tensor (resize, center
  crop, ``(x - mean) / std``); with it, normalisation is inside the graph and the input is RGB in [0, 1].
* YOLOv5: input ``input`` (B, 3, S, S), S = ``image_size``, letterboxed RGB in [0, 1] -> per image ``output_i``
  (n, 6): ``x0, y0, x1, y1, conf, class_id`` after NMS (the service's YOLO convention).
* Faster R-CNN / RetinaNet / Mask R-CNN: input ``input`` (B, 3, H, W), RGB in [0, 1] (default 600 x 800;
  torchvision's detectors resize to ``min_size``/``max_size`` and normalise inside the graph, so
  ``enable_onnx_normalization`` changes nothing for them) -> per image ``i``: ``boxes_i`` (n, 4, x0 y0 x1 y1
  in input pixels), ``labels_i`` (n, an index into the labels list) and ``scores_i`` (n), best first, above
  the package's ``box_score_threshold``; Mask R-CNN adds ``masks_i`` (n, 1, H, W, per-pixel probabilities).

Beside ``MODEL.onnx`` a ``MODEL.onnx.json`` holds what a client needs to use it: the labels, the
input's pre-processing and the outputs. Detectors are traced with PyTorch's TorchScript exporter (its
dynamo exporter cannot yet trace torchvision's detection transforms); classifiers with either.

Hand-written because no library turns a visionsweep package (its task, labels and settings) into a
graph with these names; the graph itself is ``torch.onnx``'s.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers import hyperparameters as hp
from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.progress import phase
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

OPSET = 17
DETECTION_INPUT = (600, 800)  # the service's detector input (H, W)


@dataclass
class Exported:
    path: Path
    metadata: dict[str, Any]
    max_abs_diff: float | None = None  # onnxruntime vs the PyTorch package on the check inputs


class _Normalised(nn.Module):
    """Classification with ``enable_onnx_normalization``: RGB [0, 1] in, normalisation in the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class _PerImage(nn.Module):
    """A torchvision detector on a (B, 3, H, W) batch -> flat per-image outputs, labels 0-based."""

    def __init__(self, model: nn.Module, masks: bool):
        super().__init__()
        self.model, self.masks = model, masks

    def forward(self, x: torch.Tensor):
        outs = self.model(list(x.unbind(0)))
        flat = []
        for o in outs:
            flat += [o["boxes"], o["labels"] - 1, o["scores"]]  # 0 is background in torchvision's layout
            if self.masks:
                flat.append(o["masks"])
        return tuple(flat)


class _YoloGraph(nn.Module):
    """YOLOv5 (mmyolo) as one traceable graph: letterboxed RGB [0, 1] in -> per image (n, 6)
    ``x0, y0, x1, y1, conf, class_id`` (clipped to the input) after class-wise NMS, conf = objectness x class probability (§6.6),
    above ``box_score_threshold``, at most ``box_detections_per_image``. The head's own Python post-processing
    (``predict_by_feat``) is not traceable; this is the same decoding in tensor operations."""

    def __init__(self, det: nn.Module, size: int, settings: dict[str, Any]):
        super().__init__()
        from torchvision.ops import batched_nms  # noqa: F401 - registers the NMS symbolic for export

        self.model, self.head, self.size = det.model, det.model.bbox_head, float(size)
        self.score = float(settings["box_score_threshold"])
        self.iou = float(settings["nms_iou_threshold"])
        self.max_det = int(settings.get("box_detections_per_image", 300))
        pre = det.model.data_preprocessor
        self.register_buffer("mean", pre.mean.view(1, 3, 1, 1).float() / 255.0)
        self.register_buffer("std", pre.std.view(1, 3, 1, 1).float() / 255.0)
        sizes = [(size // s, size // s) for s in self.head.featmap_strides]
        priors = self.head.prior_generator.grid_priors(sizes, dtype=torch.float32, device=torch.device("cpu"))
        strides = [torch.full((h * w * self.head.num_base_priors,), float(s)) for (h, w), s in
                   zip(sizes, self.head.featmap_strides)]
        self.register_buffer("priors", torch.cat(priors))
        self.register_buffer("strides", torch.cat(strides))

    def forward(self, x: torch.Tensor):
        from torchvision.ops import batched_nms

        feats = self.model.extract_feat((x - self.mean) / self.std)
        cls, box, obj = self.head(feats)
        n, c = x.shape[0], self.head.num_classes
        cls = torch.cat([t.permute(0, 2, 3, 1).reshape(n, -1, c) for t in cls], 1).sigmoid()
        box = torch.cat([t.permute(0, 2, 3, 1).reshape(n, -1, 4) for t in box], 1)
        obj = torch.cat([t.permute(0, 2, 3, 1).reshape(n, -1) for t in obj], 1).sigmoid()
        boxes = self.head.bbox_coder.decode(self.priors[None], box, self.strides).clamp(0, self.size)
        conf, label = (cls * obj[..., None]).max(-1)
        outs = []
        for i in range(n):
            keep = conf[i] > self.score
            b, s, lab = boxes[i][keep], conf[i][keep], label[i][keep]
            k = batched_nms(b, s, lab, self.iou)[: self.max_det]
            outs.append(torch.cat([b[k], s[k, None], lab[k, None].float()], 1))
        return tuple(outs)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise VisionsweepError(f"--image-size: expected HEIGHTxWIDTH such as 600x800, but got {text!r}")


def export_onnx(package: str, output: str | Path | None = None, *, batch_size: int = 1,
                normalization: bool | None = None, image_size: str | None = None, check: bool = True,
                check_images: list[torch.Tensor] | None = None, settings: dict[str, Any] | None = None) -> Exported:
    """Write ``output`` (default ``PACKAGE/model.onnx``) and its ``.json`` sidecar; with ``check``, run it
    under onnxruntime beside the PyTorch package on the same inputs and record the largest difference.
    ``settings`` override the package's inference settings (§9.5) that the graph bakes in, such as
    ``box_score_threshold`` or ``box_detections_per_image``."""
    from trainers.package import load_package

    if batch_size < 1:
        raise VisionsweepError(f"--batch-size: expected a positive integer, but got {batch_size}")
    size = _parse_size(image_size)
    with phase("loading the model package"):
        pkg = load_package(package, "cpu", settings)
    task, name = pkg.task, pkg.model_name
    out = Path(output) if output else Path(str(package).removeprefix("file://")) / "model.onnx"
    if is_url(str(out)):
        raise VisionsweepError(f"--output: a local file path is expected, but got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if normalization is None:  # §14: the trial's enable_onnx_normalization
        normalization = hp.as_bool(pkg.training_config.get("enable_onnx_normalization", False))
    if task in hp.CLASSIFICATION_TASKS:
        crop = int(pkg.settings["validation_crop_size"])
        module: nn.Module = _Normalised(pkg.model) if normalization else pkg.model
        example = torch.rand(batch_size, 3, crop, crop)
        if not normalization:
            example = (example - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        inputs, outputs = ["input1"], ["output1"]
        dynamic = {"input1": {0: "batch"}, "output1": {0: "batch"}}
        meta_input = {"name": "input1", "shape": ["batch", 3, crop, crop], "layout": "NCHW", "channels": "RGB",
                      "resize": int(pkg.settings["validation_resize_size"]), "center_crop": crop,
                      "normalization_in_graph": normalization,
                      "range": "[0, 1]" if normalization else "(x - mean) / std of RGB in [0, 1]",
                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        meta_outputs = [{"name": "output1", "shape": ["batch", len(pkg.classes)],
                         "meaning": "logits: softmax (multi-class) or per-label sigmoid (multi-label)"}]
    elif task in hp.BOX_TASKS and hp.model_backend(name) == "builtin" and name != "yolov5":
        if pkg.settings.get("tile_grid_size"):
            raise VisionsweepError(
                f"{package}: cannot export {name} with tile_grid_size {pkg.settings['tile_grid_size']}: tiled "
                "inference (tiles, then a class-wise NMS merge) is not part of the model's graph; export a "
                "package trained without tiling")
        h, w = size or DETECTION_INPUT
        masks = task == hp.SEGMENTATION
        module = _PerImage(pkg.model, masks)
        example = torch.rand(batch_size, 3, h, w)
        names = ["boxes", "labels", "scores"] + (["masks"] if masks else [])
        inputs, outputs, dynamic = ["input"], [f"{n}_{i}" for i in range(batch_size) for n in names], None
        meta_input = {"name": "input", "shape": [batch_size, 3, h, w], "layout": "NCHW", "channels": "RGB",
                      "range": "[0, 1]", "normalization_in_graph": True,
                      "resize_in_graph": {"min_size": pkg.settings.get("min_size"),
                                          "max_size": pkg.settings.get("max_size")}}
        meta_outputs = [{"name": f"{n}_i", "meaning": m} for n, m in (
            ("boxes", "(n, 4) x0, y0, x1, y1 in input pixels"), ("labels", "(n,) index into labels"),
            ("scores", "(n,) best first, >= box_score_threshold"),
            *((("masks", "(n, 1, H, W) per-pixel probabilities"),) if masks else ()))]
    elif name == "yolov5":
        size = int(pkg.settings.get("image_size", 640))
        module = _YoloGraph(pkg.model, size, pkg.settings)
        example = torch.rand(batch_size, 3, size, size)
        inputs, outputs, dynamic = ["input"], [f"output_{i}" for i in range(batch_size)], None
        meta_input = {"name": "input", "shape": [batch_size, 3, size, size], "layout": "NCHW", "channels": "RGB",
                      "range": "[0, 1]", "normalization_in_graph": True,
                      "letterbox": f"resize the long side to {size}, pad right and bottom with 114/255 to a square"}
        meta_outputs = [{"name": "output_i", "meaning": "(n, 6) x0, y0, x1, y1 (letterboxed pixels), conf, "
                                                        "class_id (index into labels), after NMS"}]
    else:
        raise VisionsweepError(f"{package}: {task} models of {name} cannot be exported to ONNX by this version "
                               "(ONNX export covers the classifiers, the Faster R-CNN / RetinaNet / Mask R-CNN "
                               "detectors and yolov5; MMDetection models need OpenMMLab's mmdeploy)")
    module.eval()
    try:  # tracing a detector takes a minute or more: the phase lines say it is alive
        with phase(f"tracing {name} and writing {out.name}"), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes in torchvision
            torch.onnx.export(module, (example,), str(out), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    except Exception as e:  # noqa: BLE001 - any tracer/exporter failure is "cannot be exported", with why
        raise VisionsweepError(f"{package}: {name} could not be exported to ONNX ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    meta = {"task": task, "model_name": name, "labels": list(pkg.classes), "opset": OPSET,
            "batch_size": batch_size, "input": meta_input, "outputs": meta_outputs,
            "inference_settings": pkg.settings, "source_package": str(package)}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    result = Exported(out, meta)
    if check:
        with phase(f"checking {out.name} with onnxruntime"):
            result.max_abs_diff = _check(module, out, check_images or [example], task)
    return result


def _check(module: nn.Module, path: Path, batches: list[torch.Tensor], task: str) -> float:
    """The largest absolute difference between onnxruntime and PyTorch on the same inputs. Classifier
    logits are compared element by element; detections (``boxes_i``, YOLO's (n, 6) rows) row by row, each
    exported row against its nearest PyTorch row (near-equal scores may come out in another order), and the
    numbers of detections must agree within 5 % (or 2)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise VisionsweepError("checking the export needs onnxruntime: pip install 'visionsweep[onnx]' "
                               "(or pass --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    for x in batches:
        got = sess.run(None, {name: x.numpy()})
        with torch.no_grad():
            ref = module(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        if len(got) != len(ref):
            raise VisionsweepError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}")
        for g, r in zip(got, ref):
            g, r = torch.from_numpy(g).float(), r.float()
            if task in hp.CLASSIFICATION_TASKS:
                worst = max(worst, float((g - r).abs().max()))
            elif abs(len(g) - len(r)) > max(2, 0.05 * max(len(g), len(r))):
                # a box whose score or overlap sits on a threshold may fall either side in float32
                raise VisionsweepError(f"{path}: onnxruntime found {len(g)} detections where PyTorch found {len(r)}")
            elif g.dim() == 2 and g.shape[1] >= 4 and len(g) and len(r):
                small, large = (g, r) if len(g) <= len(r) else (r, g)
                worst = max(worst, float(torch.cdist(small, large, p=float("inf")).min(1).values.max()))
    return worst

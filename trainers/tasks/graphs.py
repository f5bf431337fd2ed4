"""A task's model as one ONNX-traceable graph with the managed service's conventions (SPEC §15): what
:meth:`trainers.tasks.Task.onnx_graph` returns and ``trainers.package.onnx`` traces, writes and checks.

The wrappers turn a package's model into the graph a client of the service's ONNX models expects (a classifier
with its normalisation in the graph, a torchvision detector's flat per-image outputs, YOLOv5's decoding and NMS in
tensor operations); the conventions themselves are described in ``trainers.package.onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

DETECTION_INPUT = (600, 800)  # the service's detector input (H, W)


@dataclass
class OnnxGraph:
    """What to trace and what the ``.onnx.json`` sidecar says about it."""
    module: nn.Module
    example: torch.Tensor
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] | None
    meta_input: dict[str, Any]
    meta_outputs: list[dict[str, Any]]
    #: how the export is checked against PyTorch: element by element (logits), or detections row by row
    rows: bool


class Normalised(nn.Module):
    """Classification with ``enable_onnx_normalization``: RGB [0, 1] in, normalisation in the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class PerImage(nn.Module):
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


class YoloGraph(nn.Module):
    """YOLOv5 (mmyolo) as one traceable graph: letterboxed RGB [0, 1] in -> per image (n, 6)
    ``x0, y0, x1, y1, conf, class_id`` (clipped to the input) after class-wise NMS, conf = objectness x class
    probability (§6.6), above ``box_score_threshold``, at most ``box_detections_per_image``; a box may come once per
    class it scores above the threshold for (the head's ``multi_label``, as the package predicts). The head's own Python
    post-processing (``predict_by_feat``) is not traceable; this is the same decoding in tensor operations."""

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
        boxes = self.head.bbox_coder.decode(self.priors[None], box, self.strides)
        conf = cls * obj[..., None]  # (n, priors, classes)
        outs = []
        for i in range(n):
            # multi-label, as the head's own test_cfg: a box is a candidate for every class it scores above the
            # threshold, and NMS is class-wise on the unclipped boxes; clipped after, as the head clips them
            prior, lab = (conf[i] > self.score).nonzero(as_tuple=True)
            b, s = boxes[i][prior], conf[i][prior, lab]
            k = batched_nms(b, s, lab, self.iou)[: self.max_det]
            outs.append(torch.cat([b[k].clamp(0, self.size), s[k, None], lab[k, None].float()], 1))
        return tuple(outs)

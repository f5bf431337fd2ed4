"""An exported ONNX graph standing in for its package's PyTorch model: the same call, the same outputs, so the
task's own evaluation (``Task.score``) measures an exported form exactly as it measures the package.

The graphs are the task's (``trainers.tasks.graphs``, written by ``trainers.package.onnx``); these modules undo
what the graph's conventions changed (normalisation outside the graph, a fixed detector input, 0-based labels) and
nothing else. ``session`` is an ``onnxruntime.InferenceSession``; ``meta`` the graph's ``.json`` sidecar."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class OrtLogits(nn.Module):
    """A classifier graph (``input1`` -> ``output1`` logits) called like the package's model: a normalised NCHW
    batch in, logits out. A graph with normalisation inside takes RGB in [0, 1]: the batch is un-normalised first."""

    def __init__(self, session, meta: dict[str, Any]):
        super().__init__()
        self.session, inp = session, meta["input"]
        self.name = session.get_inputs()[0].name
        self.in_graph = bool(inp.get("normalization_in_graph"))
        self.mean = torch.tensor(inp["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(inp["std"]).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        if self.in_graph:
            x = x * self.std + self.mean
        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


class OrtDetections(nn.Module):
    """A torchvision detector's graph (input ``input`` (1, 3, H, W), outputs ``boxes_0``, ``labels_0``, ``scores_0``
    (, ``masks_0``)) called like the package's detector: a list of RGB [0, 1] images in, torchvision's per-image
    dicts out. Each image is resized to the graph's H x W and its boxes and masks scaled back; labels are 1-based
    again (0 is background in torchvision's layout). The graph's score threshold is baked in at export:
    ``score_thresh`` is here for ``trainers.models.detectors.score_threshold`` and changes nothing."""

    score_thresh = 0.0

    def __init__(self, session, meta: dict[str, Any]):
        super().__init__()
        self.session = session
        self.name = session.get_inputs()[0].name
        _, _, self.h, self.w = meta["input"]["shape"]
        self.outputs = [o.name for o in session.get_outputs()]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outs = []
        for im in images:
            h, w = im.shape[-2:]
            x = F.interpolate(im[None].float(), size=(self.h, self.w), mode="bilinear", align_corners=False)
            got = dict(zip(self.outputs, self.session.run(None, {self.name: x.contiguous().numpy()})))
            boxes = torch.from_numpy(got["boxes_0"]).float()
            boxes = boxes * torch.tensor([w / self.w, h / self.h, w / self.w, h / self.h])
            out = {"boxes": boxes, "labels": torch.from_numpy(got["labels_0"]).long() + 1,
                   "scores": torch.from_numpy(got["scores_0"]).float()}
            if "masks_0" in got:
                masks = torch.from_numpy(got["masks_0"]).float()
                out["masks"] = (F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
                                if len(masks) else masks.new_zeros((0, 1, h, w)))
            outs.append(out)
        return outs


class OrtYolo(nn.Module):
    """A YOLOv5 graph (input ``input`` (1, 3, S, S) letterboxed RGB [0, 1], outputs ``output_i`` (n, 6) rows
    ``x0, y0, x1, y1, conf, class_id`` in letterboxed pixels) called like the package's detector: a list of RGB
    [0, 1] images in, torchvision's per-image dicts out. Each image is letterboxed as the package's model does it
    (``trainers.models.openmmlab.MMDetector``: the long side resized to S, the rest grey 114 at the right and bottom)
    and its boxes scaled back; labels are 1-based again. The score threshold is baked in at export, as for
    :class:`OrtDetections`."""

    score_thresh = 0.0

    def __init__(self, session, meta: dict[str, Any]):
        super().__init__()
        self.session = session
        self.name = session.get_inputs()[0].name
        self.size = int(meta["input"]["shape"][-1])

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from trainers.models.boxes import drop_degenerate
        from trainers.models.openmmlab import YOLO_PAD

        outs = []
        for im in images:
            h, w = im.shape[-2:]
            s = self.size / max(h, w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            x = torch.full((1, 3, self.size, self.size), YOLO_PAD / 255.0)
            x[:, :, :nh, :nw] = F.interpolate(im[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
            (rows,) = self.session.run(None, {self.name: x.numpy()})
            rows = torch.from_numpy(rows).float()
            boxes = rows[:, :4] / torch.tensor([nw / w, nh / h, nw / w, nh / h])
            out = {"boxes": boxes, "scores": rows[:, 4], "labels": rows[:, 5].long() + 1}
            outs.append(drop_degenerate(out, h, w))
        return outs

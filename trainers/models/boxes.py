"""What every detector's output goes through before anyone sees it: a leaf module, so that the torchvision detectors
(``trainers.models.detectors``), the OpenMMLab adapter (``trainers.models.openmmlab``) and the detection task share
it without importing each other."""

from __future__ import annotations

from typing import Any

import torch


def drop_degenerate(out: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """One image's detections with every box clipped to the image and those left with no area dropped
    (``x2 <= x1`` or ``y2 <= y1``): a zero-area box is no detection (a tile's edge, a box regressed past the
    border), and neither metrics, reports nor clients should see one. Nor is a box of the background (label 0:
    RetinaNet scores it like a class, and a ``box_score_threshold`` of 0 lets it through). Every per-box entry is
    filtered alike."""
    boxes = out["boxes"]
    if not len(boxes):
        return out
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    clipped = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if "labels" in out:
        keep &= out["labels"] >= 1
    n = len(boxes)
    res = {k: v[keep] if torch.is_tensor(v) and v.dim() and len(v) == n else v for k, v in out.items()}
    res["boxes"] = clipped[keep]
    return res

"""YOLOv5's training augmentations (§7.1): mosaic, random affine (rotation, translation, scale, shear) and
horizontal flip, on samples ``(float CHW image in [0, 1], target)`` of the detection task.

Mosaic is written here because no library this project uses has one for ``torchvision`` samples
(mmyolo's works inside its own dataset pipeline): four training images, each resized so its long side is
``size``, are placed around a random centre of a ``2 size`` square canvas (grey 114), boxes shifted and
clipped; the canvas then goes through the random affine and is resized to ``size``. The affine and the
flip are torchvision's v2 transforms on ``tv_tensors`` (boxes move with the image), followed by
``SanitizeBoundingBoxes``. Without mosaic (``advanced_settings.apply_mosaic_for_yolo: false``) each image is
letterboxed to ``size`` first; ``apply_automl_train_augmentations: false`` drops the affine and the flip.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

GREY = 114 / 255


def _fit(img: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize so the long side is ``size``; boxes scaled alike."""
    h, w = img.shape[-2:]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    return img, boxes * boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])


class YoloTrainSet(Dataset):
    """Wraps the task's un-augmented training samples; every item is a ``size`` x ``size`` training image."""

    def __init__(self, base: Dataset, size: int, mosaic: bool = True, augment: bool = True):
        self.base, self.size, self.mosaic, self.augment = base, int(size), mosaic, augment
        self._pipeline = None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self.mosaic:
            idx = [i] + [random.randrange(len(self.base)) for _ in range(3)]
            img, t = self._mosaic([self.base[j] for j in idx])
        else:
            img, t = self.base[i]
            img, boxes = _fit(img, t["boxes"], self.size)
            canvas = img.new_full((3, self.size, self.size), GREY)
            canvas[:, : img.shape[1], : img.shape[2]] = img
            img, t = canvas, {**t, "boxes": boxes}
        return self._transform(img, t)

    def _mosaic(self, items: list) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.size
        canvas = torch.full((3, 2 * s, 2 * s), GREY)
        xc, yc = (int(random.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
        boxes, labels, crowd = [], [], []
        for k, (img, t) in enumerate(items):
            img, b = _fit(img, t["boxes"], s)
            h, w = img.shape[-2:]
            if k == 0:  # top left: the image's bottom-right corner at the centre
                xa0, ya0, xa1, ya1 = max(xc - w, 0), max(yc - h, 0), xc, yc
                xb0, yb0 = w - (xa1 - xa0), h - (ya1 - ya0)
            elif k == 1:  # top right
                xa0, ya0, xa1, ya1 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                xb0, yb0 = 0, h - (ya1 - ya0)
            elif k == 2:  # bottom left
                xa0, ya0, xa1, ya1 = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                xb0, yb0 = w - (xa1 - xa0), 0
            else:  # bottom right
                xa0, ya0, xa1, ya1 = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                xb0, yb0 = 0, 0
            cw, ch = xa1 - xa0, ya1 - ya0
            canvas[:, ya0:ya1, xa0:xa1] = img[:, yb0:yb0 + ch, xb0:xb0 + cw]
            shifted = b + b.new_tensor([xa0 - xb0, ya0 - yb0, xa0 - xb0, ya0 - yb0])
            lo = shifted.new_tensor([xa0, ya0, xa0, ya0])
            hi = shifted.new_tensor([xa1, ya1, xa1, ya1])
            shifted = torch.maximum(torch.minimum(shifted, hi), lo)  # clip to the part that was pasted
            boxes.append(shifted)
            labels.append(t["labels"])
            crowd.append(t["iscrowd"])
        t = {"boxes": torch.cat(boxes).reshape(-1, 4), "labels": torch.cat(labels), "iscrowd": torch.cat(crowd)}
        return canvas, t

    def _transform(self, img: torch.Tensor, t: dict[str, Any]):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        if self._pipeline is None:
            steps = []
            if self.augment:
                steps += [v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.5, 1.5), shear=0.0,
                                          fill={tv_tensors.Image: GREY, "others": 0}),
                          v2.RandomHorizontalFlip()]
            steps += [v2.Resize((self.size, self.size), antialias=True), v2.SanitizeBoundingBoxes(min_size=2.0)]
            self._pipeline = v2.Compose(steps)
        h, w = img.shape[-2:]
        wrapped = {"boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(h, w)),
                   "labels": t["labels"], "iscrowd": t["iscrowd"]}
        img, out = self._pipeline(tv_tensors.Image(img), wrapped)
        return img.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in out.items()}

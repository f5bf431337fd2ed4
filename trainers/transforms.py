"""Classification augmentation presets (SPEC §7.1), from torchvision.transforms.v2.

training: random resize-and-crop, horizontal flip, colour jitter, ImageNet normalisation;
validation / inference: resize, center crop, normalisation.

The random transforms draw from torch's generator, which the training dataset seeds for each sample
(``trainers.data.draws``): a sample's crop, flip and jitter follow from the trial seed, the epoch and the sample.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(crop_size: int) -> v2.Compose:
    """Training preset: random resized crop to ``crop_size``, flip, colour jitter, normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(crop_size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
        *_to_tensor(),
    ])


def eval_transform(resize_size: int, crop_size: int) -> v2.Compose:
    """Validation and inference preset: resize the short side to ``resize_size``, center-crop, normalise."""
    return v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(crop_size), *_to_tensor()])

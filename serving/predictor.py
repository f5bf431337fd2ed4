"""Model package -> predictions in the managed service's response JSON (SPEC §15).

Classification (multi-class and multi-label alike)::

    [{"probs": [0.02, 0.97, 0.01], "labels": ["cat", "dog", "fox"]}]

``probs`` is aligned with ``labels`` (softmax for multi-class, per-label sigmoid for multi-label), one
object per input image, in input order. Inference settings (§9.5) come from the package's
``settings.json`` and may be overridden per call site (e.g. per deployment).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from trainers.data import decode_image
from trainers.errors import DataError
from trainers.package import load_package
from trainers.tasks import make_task
from trainers.transforms import eval_transform


BadImage = DataError  # an input that is not a decodable image (a 400 when served)


class Predictor:
    """Loads a model package once and predicts batches of encoded images."""

    def __init__(self, package: str, device: str | None = None, settings: dict[str, Any] | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pkg = load_package(package, str(self.device), settings)
        s = self.pkg.settings
        self.transform = eval_transform(int(s.get("validation_resize_size", 256)), int(s.get("validation_crop_size", 224)))
        self.task = make_task(self.pkg.task, self.pkg.classes)

    @property
    def labels(self) -> list[str]:
        return self.pkg.classes

    @torch.no_grad()
    def predict_images(self, images: Sequence[bytes | Image.Image]) -> list[dict[str, Any]]:
        if not images:
            return []
        pil = [im if isinstance(im, Image.Image) else decode_image(im, f"image {i}") for i, im in enumerate(images)]
        x = torch.stack([self.transform(im) for im in pil]).to(self.device)
        probs = self.task.probabilities(self.pkg.model(x)).float().cpu().tolist()
        return [{"probs": p, "labels": list(self.labels)} for p in probs]

"""Model package -> predictions in the managed service's response JSON (SPEC §15).

Classification (multi-class and multi-label alike)::
    [{"probs": [0.02, 0.97, 0.01], "labels": ["cat", "dog", "fox"]}]

``probs`` is aligned with ``labels`` (softmax for multi-class, per-label sigmoid for multi-label).

Object detection (coordinates normalised to [0, 1] by the image's width and height)::
    [{"boxes": [{"box": {"topX": 0.22, "topY": 0.28, "bottomX": 0.40, "bottomY": 0.62}, "label": "milk_bottle",
                 "score": 0.94}]}]

Instance segmentation: the same, each box with ``"polygon": [[x1, y1, x2, y2, ...], ...]`` (normalised; one
list per part of the instance) and, with ``export_as_image``, ``"mask"``: the instance's binary mask as a
base64 JPG/PNG (``image_type``).

One object per input image, in input order. Inference settings (§9.5) come from the package's
``settings.json`` and may be overridden per call site (e.g. per deployment).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import torch
from PIL import Image

from serving.schema import MAX_IMAGE_PIXELS
from trainers import hyperparameters as hp
from trainers.data.images import decode_image as decode
from trainers.errors import DataError
from trainers.package import load_package
from trainers.polygons import mask_to_polygons
from trainers.tasks import make_task
from trainers.workers import Runtime

BadImage = DataError  # an input that is not a decodable image (a 400 when served)


def decode_image(data: bytes, where: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A request's image: the training data's decoder (``trainers.data.images.decode_image``) with the serving
    cap; ``ImageTooLarge`` (a 413) above it, ``BadImage`` (a 400) for anything that is not an image."""
    return decode(data, where, max_pixels, "serving.schema.MAX_IMAGE_PIXELS")


class Predictor:
    """Loads a model package once and predicts batches of encoded images."""

    def __init__(self, package: str, device: str | None = None, settings: dict[str, Any] | None = None,
                 registry_uri: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pkg = load_package(package, str(self.device), settings, registry_uri)
        self.task = make_task(self.pkg.task, self.pkg.classes)
        # the task's: a classifier's resize and center crop, or None where the model takes whole images (a detector,
        # whose bad override of a setting is an error now, not at the first request)
        self.transform = self.task.input_transform(self.pkg.settings, package)
        self.classification = self.transform is not None

    @property
    def labels(self) -> list[str]:
        return self.pkg.classes

    @torch.no_grad()
    def predict_images(self, images: Sequence[bytes | Image.Image]) -> list[dict[str, Any]]:
        if not images:
            return []
        pil = [im if isinstance(im, Image.Image) else decode_image(im, f"image {i}") for i, im in enumerate(images)]
        if not self.classification:
            return self._detect(pil)
        x = torch.stack([self.transform(im) for im in pil]).to(self.device)
        probs = self.task.probabilities(self.pkg.model(x)).float().cpu().tolist()
        return [{"probs": p, "labels": list(self.labels)} for p in probs]

    def _detect(self, pil: list[Image.Image]) -> list[dict[str, Any]]:
        from torchvision.transforms.functional import pil_to_tensor

        # torchvision's detectors resize (min_size/max_size) and normalise inside the model, and answer in
        # the input's pixel coordinates
        xs = [pil_to_tensor(im.convert("RGB")).float().div_(255).to(self.device) for im in pil]
        # the trainer's own prediction path: the whole image, or every tile and the whole image merged (§6.5)
        outputs = self.task.predict(self.pkg.model, xs, self.pkg.settings, Runtime(self.device))
        return [format_detections(out, im.width, im.height, self.labels, self.pkg.settings,
                                  segmentation=self.task.segmentation) for out, im in zip(outputs, pil)]


def format_detections(out: dict[str, torch.Tensor], width: int, height: int, classes: Sequence[str],
                      settings: dict[str, Any], segmentation: bool = False) -> dict[str, Any]:
    """One image's detector output (pixel ``boxes``, ``labels`` with 0 = background, ``scores``, ``masks``)
    -> its §15 response object, best score first. ``settings`` holds every §9.5 setting of the task."""

    thr = float(settings["box_score_threshold"])
    boxes = out["boxes"].float().cpu()
    order = out["scores"].float().cpu().argsort(descending=True).tolist()
    result = []
    for i in order:
        score = float(out["scores"][i])
        label = int(out["labels"][i])
        if score < thr or not 1 <= label <= len(classes):
            continue
        x0, y0, x1, y1 = boxes[i].tolist()
        item: dict[str, Any] = {
            "box": {"topX": _unit(x0 / width), "topY": _unit(y0 / height),
                    "bottomX": _unit(x1 / width), "bottomY": _unit(y1 / height)},
            "label": classes[label - 1], "score": round(score, 6)}
        if segmentation:
            mask = out["masks"][i, 0].float().cpu().numpy()
            mthr = float(settings["mask_pixel_score_threshold"])
            item["polygon"] = mask_to_polygons(mask, mthr, int(settings["max_number_of_polygon_points"]))
            if _export_as_image(settings):
                item["mask"] = _encode_mask(mask >= mthr, str(settings["image_type"]))
        result.append(item)
    return {"boxes": result}


def _unit(v: float) -> float:
    return round(min(1.0, max(0.0, v)), 6)


def _export_as_image(settings: dict[str, Any]) -> bool:
    try:
        return hp.as_bool(settings["export_as_image"])  # the job file's booleans (true/false, 0/1)
    except ValueError:
        raise DataError(f"inference setting export_as_image: expected true or false, got "
                        f"{settings['export_as_image']!r}") from None


def _encode_mask(mask, image_type: str) -> str:
    fmt = {"JPG": "JPEG", "JPEG": "JPEG", "PNG": "PNG"}.get(image_type.upper())
    if fmt is None:
        raise DataError(f"inference setting image_type: expected JPG or PNG, got {image_type!r}")
    buf = io.BytesIO()
    Image.fromarray((mask * 255).astype("uint8"), mode="L").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()

"""Predictions outside Serve: a model package on image files, answered as the endpoint answers them (§15, each
response naming its image first) or as COCO results JSON, optionally drawn on the images.

``visionsweep predict`` is this module behind its arguments; a notebook calls :func:`predict_files` the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trainers.errors import VisionsweepError

FORMATS = ("response", "coco")


@dataclass
class Predictions:
    """What :func:`predict_files` made: ``results`` (the JSON document: one response per image, or COCO results)
    and the drawn images' paths (``drawn``, empty without ``draw``)."""

    results: list[dict[str, Any]]
    format: str = "response"
    drawn: list[str] = field(default_factory=list)


def read_image_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise VisionsweepError(f"{path}: cannot read the image ({e.strerror})") from None


def predict_files(package: str, paths: Sequence[str], *, device: str | None = None,
                  settings: dict[str, Any] | None = None, format: str = "response", coco_gt: str | None = None,
                  draw: str | None = None) -> Predictions:
    """Predict the images at ``paths`` with ``package`` (a folder or storage URL).

    ``format``: ``response`` (the endpoint's JSON, ``filename`` first) or ``coco`` (COCO results of the boxes and
    masks; ``coco_gt``: take image and category ids from that annotation file). ``settings``: inference-setting
    overrides (§9.5). ``draw``: also write each image with its predictions drawn as ``DRAW/<stem>.png`` (a folder or
    storage URL), drawn from the §15 responses whatever ``format`` is."""
    from serving.predictor import Predictor

    if format not in FORMATS:
        raise VisionsweepError(f"predict: format {format!r}: expected one of {', '.join(FORMATS)}")
    predictor = Predictor(package, device=device, settings=settings)
    images = [read_image_file(p) for p in paths]
    responses = predictor.predict_images(images)
    drawn: list[str] = []
    if draw:
        from serving.draw import save_drawings

        drawn = save_drawings(images, paths, responses, draw, predictor.labels, predictor.task.multi)
    if format == "coco":
        from PIL import Image

        from serving.coco_results import to_coco_results

        sizes = [Image.open(io.BytesIO(b)).size for b in images]
        return Predictions(to_coco_results(responses, paths, sizes, predictor.labels, gt=coco_gt), format, drawn)
    return Predictions([{"filename": name, **r} for name, r in zip(paths, responses)], format, drawn)

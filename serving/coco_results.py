"""§15 detection responses -> COCO results JSON, for evaluating visionsweep's predictions with external tools.

COCO's results format is a flat list of ``{"image_id", "category_id", "bbox": [x, y, w, h] (pixels),
"score"}`` (plus ``"segmentation"`` as RLE for instance segmentation: COCO's ``loadRes`` computes areas
from RLE, so the response's polygons are rasterised to RLE at the image's size).

Ids: evaluated against a COCO annotation file (``gt``), an image's id is the one whose ``file_name``
matches the image's file name, and a class's id the category of the same name; without one, images
are numbered in the order given (from 0) and classes by their position in ``labels.json`` (from 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from trainers.errors import VisionsweepError


def _ids_from_gt(gt: str, image_paths: Sequence[str], classes: Sequence[str]) -> tuple[list[int], dict[str, int]]:
    try:
        doc = json.loads(Path(gt).read_text())
        by_name = {Path(im["file_name"]).name: int(im["id"]) for im in doc["images"]}
        cats = {c["name"]: int(c["id"]) for c in doc["categories"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VisionsweepError(f"{gt}: expected a COCO annotation file with images[].file_name/id and "
                               f"categories[].name/id ({e})") from None
    missing = [p for p in image_paths if Path(p).name not in by_name]
    if missing:
        raise VisionsweepError(f"{gt}: no image named {Path(missing[0]).name!r} (from {missing[0]})")
    unknown = [c for c in classes if c not in cats]
    if unknown:
        raise VisionsweepError(f"{gt}: no category named {unknown[0]!r} (a class of the model)")
    return [by_name[Path(p).name] for p in image_paths], cats


def to_coco_results(responses: Sequence[dict[str, Any]], image_paths: Sequence[str],
                    sizes: Sequence[tuple[int, int]], classes: Sequence[str], gt: str | None = None) -> list[dict]:
    """``sizes``: (width, height) of each image, in the order of ``responses``."""
    if gt:
        image_ids, cats = _ids_from_gt(gt, image_paths, classes)
    else:
        image_ids, cats = list(range(len(image_paths))), {c: i + 1 for i, c in enumerate(classes)}
    out = []
    for resp, image_id, (w, h) in zip(responses, image_ids, sizes):
        if "boxes" not in resp:
            raise VisionsweepError("--format coco needs a detection or instance-segmentation model")
        for b in resp["boxes"]:
            c = b["box"]
            x0, y0, x1, y1 = c["topX"] * w, c["topY"] * h, c["bottomX"] * w, c["bottomY"] * h
            item = {"image_id": image_id, "category_id": cats[b["label"]],
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": b["score"]}
            if "polygon" in b:
                item["segmentation"] = _polygons_to_rle(b["polygon"], w, h)
            out.append(item)
    return out


def _polygons_to_rle(parts: list[list[float]], w: int, h: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    pixels = [[v * (w if i % 2 == 0 else h) for i, v in enumerate(part)] for part in parts if len(part) >= 6]
    if not pixels:
        rle = mask_utils.encode(__import__("numpy").zeros((h, w), dtype="uint8", order="F"))
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(pixels, h, w))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}

"""COCO annotation JSON -> rows (boxes from ``bbox``, instances from polygon or RLE ``segmentation``).

COCO boxes are ``[x, y, w, h]`` in pixels with a continuous (0-based) origin, so they normalise by plain
division. ``iscrowd`` becomes ``isCrowd``, which the metric ignores as COCO's own evaluation does. RLE
masks (crowds, mostly) become polygons with the same tracer the models' mask output uses
(:func:`trainers.polygons.mask_to_polygons`), so training targets and predictions share one geometry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from trainers import hyperparameters as hp
from trainers.data.converters.rows import Row, Warnings, box, image_size, instance, positive_size
from trainers.errors import DataError
from trainers.polygons import mask_to_polygons


def read(src: Path, task: str, warn: Warnings, images: str | None = None) -> Iterator[Row]:
    """Rows of the annotation file ``src``; images under ``images`` (default: the JSON file's folder)."""
    doc = _load(src)
    root = Path(images) if images else src.parent
    names = _categories(src, doc)
    by_image: dict = {}
    for i, img in enumerate(doc["images"]):
        if (not isinstance(img, dict) or not isinstance(img.get("id"), (int, str))
                or not isinstance(img.get("file_name"), str) or not img["file_name"]):
            raise DataError(f"{src}: images[{i}]: expected an object with an 'id' and a 'file_name' string, "
                            f"but got {img!r}")
        by_image[img["id"]] = (img, [])
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{src}: annotations[{i}]: expected an object, but got {ann!r}")
        where = f"{src}: annotation id {ann.get('id', f'#{i}')}"
        if not _known(ann.get("image_id"), by_image):
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if not _known(ann.get("category_id"), names):
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                            f"(known: {sorted(names, key=str)})")
        by_image[ann["image_id"]][1].append((ann, where))
    for img, anns in by_image.values():
        path = _find(root, img["file_name"])
        if path is None:
            warn.add(f"skipped images not found under {root}", img["file_name"])
            continue
        width, height = img.get("width"), img.get("height")
        if not positive_size(width, height):
            width, height = image_size(path, f"{src}: image id {img['id']}")
        label = []
        for ann, where in anns:
            obj = (_box if task == hp.DETECTION else _instance)(ann, where, names[ann["category_id"]],
                                                                  float(width), float(height), warn)
            if obj is not None:
                label.append(obj)
        yield Row(path, int(width), int(height), label, img["file_name"])


def _load(src: Path) -> dict:
    if src.is_dir():
        raise DataError(f"{src}: expected the COCO annotation JSON file, but got a folder")
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{src}: cannot read the COCO annotation file ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{src}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{src}: expected a COCO object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{src}: expected a {key!r} list (a COCO annotation file)")
    return doc


def _categories(src: Path, doc: dict) -> dict:
    names = {}
    for i, c in enumerate(doc["categories"]):
        if (not isinstance(c, dict) or not isinstance(c.get("id"), (int, str))
                or not isinstance(c.get("name"), str) or not c["name"].strip()):
            raise DataError(f"{src}: categories[{i}]: expected an object with 'id' and a non-empty 'name', "
                            f"but got {c!r}")
        names[c["id"]] = c["name"]
    return names


def _known(key, table: dict) -> bool:
    return isinstance(key, (int, str)) and key in table


def _find(root: Path, file_name: str) -> Path | None:
    """``root/file_name``, then ``root/<basename>`` (exports often keep a split folder in ``file_name``)."""
    for candidate in (root / file_name, root / Path(file_name).name, Path(file_name)):
        if candidate.is_file():
            return candidate
    return None


def _crowd(ann: dict, where: str) -> bool:
    v = ann.get("iscrowd", 0)
    if v not in (0, 1) and not isinstance(v, bool):
        raise DataError(f"{where}: expected iscrowd to be 0 or 1, but got {v!r}")
    return bool(v)


def _box(ann: dict, where: str, name: str, width: float, height: float, warn: Warnings) -> dict | None:
    b = ann.get("bbox")
    if (not isinstance(b, list) or len(b) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
        raise DataError(f"{where}: expected bbox to be [x, y, width, height] in pixels, but got {b!r}")
    x, y, w, h = b
    out = box(name, x, y, x + w, y + h, width, height, _crowd(ann, where))
    if out is None:
        warn.add("skipped degenerate boxes (no width or height inside the image)", where)
    return out


def _instance(ann: dict, where: str, name: str, width: float, height: float, warn: Warnings) -> dict | None:
    seg = ann.get("segmentation")
    crowd = _crowd(ann, where)
    if isinstance(seg, dict):
        parts = _rle_polygons(seg, where)
        out = instance(name, parts, crowd)
    elif isinstance(seg, list) and all(isinstance(p, list) for p in seg):
        for p in seg:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p):
                raise DataError(f"{where}: expected each polygon to be a list of pixel x, y numbers, but got {p!r}")
        out = instance(name, seg, crowd, scale=(width, height))
    else:
        raise DataError(f"{where}: expected segmentation to be a list of polygons [[x1, y1, x2, y2, ...], ...] "
                        f"or an RLE object {{counts, size}}, but got {seg!r}")
    if out is None:
        warn.add("skipped instances without a polygon of at least 3 points and non-zero area", where)
    return out


def _rle_polygons(seg: dict, where: str) -> list[list[float]]:
    """Compressed (``counts`` string) or uncompressed (``counts`` list) RLE -> normalised polygon parts."""
    from pycocotools import mask as mask_utils


    size, counts = seg.get("size"), seg.get("counts")
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)
            or not isinstance(counts, (str, list))):
        raise DataError(f"{where}: expected an RLE segmentation {{'size': [height, width], 'counts': ...}}, "
                        f"but got size {size!r} and counts of type {type(counts).__name__}")
    h, w = size
    try:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(counts, list) else dict(seg)
        mask = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors for bad counts
        raise DataError(f"{where}: cannot decode the RLE segmentation ({e})") from None
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask_to_polygons(mask, threshold=0.5, max_points=100)

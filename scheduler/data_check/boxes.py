"""Boxes and polygons that parse but will not train well: boxes under a pixel wide or high at the image's size, the
same object boxed twice, self-intersecting polygons, and how many objects are tiny (what ``tile_grid_size`` is for).

The parser has refused what cannot be a box already (coordinates outside [0, 1], bottom above top, polygons of under
three points or no area: ``trainers.labels``); these are the problems a well-formed file still has. Pixel sizes come
from each image's own size (read with its content hash, ``content``). Polygon validity is shapely's (``is_valid``,
``explain_validity``): the OGC rules, not a hand-written test.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from trainers.labels import Box

TINY_PX = 32 * 32  # COCO's "small" objects: under 32x32 pixels of the original image
DUPLICATE_IOU = 0.9  # two boxes of one label overlapping this much box one object twice
TILE_SHARE = 0.3  # a share of tiny objects above which tiling is advised
LISTED = 200  # findings of each kind listed (all are counted)


def _iou(a: Any, b: Any) -> float:
    w = min(a.bottom_x, b.bottom_x) - max(a.top_x, b.top_x)
    h = min(a.bottom_y, b.bottom_y) - max(a.top_y, b.top_y)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = ((a.bottom_x - a.top_x) * (a.bottom_y - a.top_y) + (b.bottom_x - b.top_x) * (b.bottom_y - b.top_y)
             - inter)
    return inter / union if union > 0 else 0.0


def boxes(records: Sequence[Any], fps: Mapping[str, Any], tile_grid_size: Any = None) -> dict[str, Any]:
    """The box and polygon findings of ``records`` (training and validation lines), each naming its line,
    ``image_url`` and the object's index on that line; ``{}`` where no label holds a box (classification)."""
    if not any(isinstance(b, Box) for r in records if isinstance(r.label, tuple) for b in r.label):
        return {}  # labels without boxes (classification), or no object at all
    from shapely.geometry import Polygon
    from shapely.validation import explain_validity

    degenerate, twice, invalid = [], [], []
    objects = tiny = sized = 0
    for r in records:
        fp = fps.get(r.image_url)
        w, h = (fp.width, fp.height) if fp is not None and fp.width else (0, 0)
        for k, b in enumerate(r.label):
            objects += 1
            if w:
                sized += 1
                bw, bh = (b.bottom_x - b.top_x) * w, (b.bottom_y - b.top_y) * h
                if bw < 1 or bh < 1:
                    degenerate.append({"image_url": r.image_url, "line": r.source, "object": k, "label": b.label,
                                       "width_px": round(bw, 2), "height_px": round(bh, 2)})
                if bw * bh < TINY_PX:
                    tiny += 1
            for j in range(k):
                other = r.label[j]
                if other.label == b.label and _iou(other, b) >= DUPLICATE_IOU:
                    twice.append({"image_url": r.image_url, "line": r.source, "objects": [j, k], "label": b.label,
                                  "iou": round(_iou(other, b), 3)})
            for part in b.polygon or ():
                poly = Polygon(list(zip(part[0::2], part[1::2])))
                if not poly.is_valid:
                    invalid.append({"image_url": r.image_url, "line": r.source, "object": k, "label": b.label,
                                    "why": explain_validity(poly)})
    share = round(tiny / sized, 4) if sized else None
    advice = []
    if share is not None and share > TILE_SHARE and not tile_grid_size:
        advice.append(f"{share:.0%} of the objects are under 32x32 pixels: tiling (training_parameters."
                      "tile_grid_size, e.g. 3x2) trains and predicts on tiles where they are larger")
    if degenerate:
        advice.append(f"{len(degenerate)} box(es) are under a pixel wide or high at their image's size: fix or drop "
                      "them (the first lines are listed)")
    if twice:
        advice.append(f"{len(twice)} object(s) are boxed twice (same label, IoU >= {DUPLICATE_IOU}): keep one box")
    if invalid:
        advice.append(f"{len(invalid)} polygon(s) intersect themselves: the mask drawn from them is not the object")
    return {"objects": objects, "tiny_objects": tiny, "tiny_share": share, "tiny_px": TINY_PX,
            "degenerate": degenerate[:LISTED], "degenerate_count": len(degenerate),
            "duplicate_boxes": twice[:LISTED], "duplicate_boxes_count": len(twice),
            "invalid_polygons": invalid[:LISTED], "invalid_polygons_count": len(invalid), "advice": advice}

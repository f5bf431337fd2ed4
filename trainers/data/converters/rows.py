"""What every converter produces: one :class:`Row` per image, labels already in the project's JSONL form.

The readers (COCO, VOC, YOLO) differ only in how they find images and parse annotations; the geometry
(pixels -> normalised, clipped, rounded coordinates) and the bookkeeping of skipped objects are the same,
so they live here and the three formats cannot drift apart on, say, rounding or what counts as degenerate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trainers.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DECIMALS = 6


@dataclass
class Row:
    """One image: where it is, its size in pixels and its label (a list of box or instance dicts).

    ``name`` is the image's path relative to the dataset's image root; ``--copy-images`` keeps that layout
    under ``OUT/images/`` so that two ``x.jpg`` in different splits do not overwrite each other.
    """

    image: Path
    width: int
    height: int
    label: list[dict] = field(default_factory=list)
    name: str = ""


class Warnings:
    """Skipped objects and images, counted per kind: one line per kind with the first place it happened.

    A large COCO file can have thousands of degenerate boxes; one line each would bury the summary.
    """

    def __init__(self) -> None:
        self._kinds: OrderedDict[str, list] = OrderedDict()

    def add(self, kind: str, where: str) -> None:
        entry = self._kinds.setdefault(kind, [0, where])
        entry[0] += 1

    def lines(self) -> list[str]:
        return [f"{kind}: {n} (first: {where})" for kind, (n, where) in self._kinds.items()]


def _unit(v: float) -> float:
    return round(min(1.0, max(0.0, float(v))), DECIMALS)


def box(label: str, x0: float, y0: float, x1: float, y1: float, width: float, height: float,
        crowd: bool = False) -> dict | None:
    """A detection box from pixel corners; ``None`` when it has no area once clipped to the image.

    The check is made after rounding, because the label parser demands ``bottomX > topX`` strictly.
    """
    return norm_box(label, x0 / width, y0 / height, x1 / width, y1 / height, crowd)


def norm_box(label: str, tx: float, ty: float, bx: float, by: float, crowd: bool = False) -> dict | None:
    """A detection box from already normalised corners (YOLO), clipped and rounded like :func:`box`."""
    tx, ty, bx, by = _unit(tx), _unit(ty), _unit(bx), _unit(by)
    if bx <= tx or by <= ty:
        return None
    return {"label": label, "topX": tx, "topY": ty, "bottomX": bx, "bottomY": by, "isCrowd": bool(crowd)}


def instance(label: str, parts: list[list[float]], crowd: bool = False, scale: tuple[float, float] = (1.0, 1.0)
             ) -> dict | None:
    """A segmentation instance from polygon parts (flat x, y lists, divided by ``scale`` = (W, H)).

    Parts with fewer than 3 points are dropped; ``None`` when none is left or the polygon has no area
    (the label parser rejects both).
    """
    sx, sy = scale
    out = []
    for part in parts:
        if len(part) < 6:
            continue
        xy = part[: len(part) // 2 * 2]
        out.append([_unit(v / (sx if i % 2 == 0 else sy)) for i, v in enumerate(xy)])
    if not out:
        return None
    xs = [v for p in out for v in p[0::2]]
    ys = [v for p in out for v in p[1::2]]
    if max(xs) <= min(xs) or max(ys) <= min(ys):
        return None
    return {"label": label, "isCrowd": bool(crowd), "polygon": out}


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the image header; PIL reads no pixels for this."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{where}: image {path} not found; it is needed for the image size") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: cannot read the size of image {path} ({e})") from None


def positive_size(w, h) -> bool:
    try:
        return float(w) > 0 and float(h) > 0
    except (TypeError, ValueError):
        return False

"""Parsing and validating the ``label`` of a JSONL line, per task (SPEC §2.3, §13 A1/A2, §14).

* multi-class: one class name (string; an integer is taken as its string form).
* multi-label: a list of class names (may be empty: an image with none of the labels).
* object detection: one box object or a list of them, ``{label, topX, topY, bottomX, bottomY, isCrowd}``,
  coordinates normalised to [0, 1], numbers or numeric strings; ``isCrowd`` bool / "true"/"false" / 0/1.
* instance segmentation: a list of ``{label, isCrowd, polygon: [[x1, y1, x2, y2, ...], ...]}``,
  normalised; an optional ``bbox`` (may be ``"null"``) is ignored: the box comes from the polygon.

A parser raises ``ValueError`` with a message that says what was expected; the dataset reader adds the
file and line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from trainers import hyperparameters as hp


@dataclass(frozen=True)
class Box:
    label: str
    top_x: float
    top_y: float
    bottom_x: float
    bottom_y: float
    is_crowd: bool = False
    polygon: tuple[tuple[float, ...], ...] | None = None


def _class_name(v: Any, what: str = "label") -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"expected {what} to be a class-name string, but got {v!r}")
    s = str(v)
    if not s.strip():
        raise ValueError(f"expected {what} to be a non-empty class name")
    return s


def parse_multiclass(v: Any) -> str:
    if isinstance(v, list):
        raise ValueError(f"expected one class name for {hp.MULTICLASS}, but got a list {v!r} "
                         f"(use task {hp.MULTILABEL} for several labels per image)")
    return _class_name(v)


def parse_multilabel(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of class names for {hp.MULTILABEL}, but got {v!r}")
    names = tuple(_class_name(x, "each label") for x in v)
    if len(set(names)) != len(names):
        raise ValueError(f"expected distinct labels, but got {v!r}")
    return names


def _number(obj: dict, key: str) -> float:
    if key not in obj:
        raise ValueError(f"box is missing {key!r}")
    v = obj[key]
    try:
        if isinstance(v, bool):
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected {key} to be a number, but got {v!r}") from None
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"expected {key} normalised to [0, 1], but got {v!r}")
    return x


def _crowd(obj: dict) -> bool:
    v = obj.get("isCrowd", False)
    if isinstance(v, bool):
        return v
    if v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "false", "0", "1"):
        return v.lower() in ("true", "1")
    raise ValueError(f"expected isCrowd to be true/false or 0/1, but got {v!r}")


_BOX_KEYS = {"label", "topX", "topY", "bottomX", "bottomY", "isCrowd"}


def _objects(v: Any) -> list[dict]:
    items = [v] if isinstance(v, dict) else v
    if not isinstance(items, list) or not all(isinstance(o, dict) for o in items):
        raise ValueError(f"expected a box object or a list of box objects, but got {v!r}")
    return items


def parse_detection(v: Any) -> tuple[Box, ...]:
    boxes = []
    for o in _objects(v):
        extra = set(o) - _BOX_KEYS
        if extra:
            raise ValueError(f"unknown box keys {sorted(extra)}; expected {sorted(_BOX_KEYS)}")
        b = Box(_class_name(o.get("label")), _number(o, "topX"), _number(o, "topY"),
                _number(o, "bottomX"), _number(o, "bottomY"), _crowd(o))
        if not (b.bottom_x > b.top_x and b.bottom_y > b.top_y):
            raise ValueError(f"expected bottomX > topX and bottomY > topY, but got box {o!r}")
        boxes.append(b)
    return tuple(boxes)


def parse_segmentation(v: Any) -> tuple[Box, ...]:
    out = []
    for o in _objects(v):
        extra = set(o) - {"label", "isCrowd", "polygon", "bbox"}
        if extra:
            raise ValueError(f"unknown instance keys {sorted(extra)}; expected label, isCrowd, polygon")
        poly = o.get("polygon")
        if not isinstance(poly, list) or not poly or not all(isinstance(p, list) for p in poly):
            raise ValueError(f"expected polygon to be a list of [x1, y1, x2, y2, ...] lists, but got {poly!r}")
        parts = []
        for part in poly:
            if len(part) < 6 or len(part) % 2:
                raise ValueError(f"expected each polygon part to have an even number (>= 6) of coordinates, "
                                 f"but got {len(part)}")
            coords = tuple(_number({"polygon": c}, "polygon") for c in part)
            parts.append(coords)
        xs = [c for p in parts for c in p[0::2]]
        ys = [c for p in parts for c in p[1::2]]
        if max(xs) <= min(xs) or max(ys) <= min(ys):
            raise ValueError("expected a polygon with a non-zero area")
        out.append(Box(_class_name(o.get("label")), min(xs), min(ys), max(xs), max(ys), _crowd(o), tuple(parts)))
    return tuple(out)


PARSERS: dict[str, Callable[[Any], Any]] = {
    hp.MULTICLASS: parse_multiclass,
    hp.MULTILABEL: parse_multilabel,
    hp.DETECTION: parse_detection,
    hp.SEGMENTATION: parse_segmentation,
}


def label_json(label: Any) -> Any:
    """A parsed label back in its JSONL form (v2 key names, numbers), e.g. for the run folder's data files."""
    if isinstance(label, str):
        return label
    if not label or not isinstance(label[0], Box):
        return list(label)
    out = []
    for b in label:
        if b.polygon is not None:
            out.append({"label": b.label, "isCrowd": b.is_crowd, "polygon": [list(p) for p in b.polygon]})
        else:
            out.append({"label": b.label, "topX": b.top_x, "topY": b.top_y, "bottomX": b.bottom_x,
                        "bottomY": b.bottom_y, "isCrowd": b.is_crowd})
    return out


def _box_labels(label: Any) -> tuple[str, ...]:
    return tuple(b.label for b in label)


# the class names a parsed label of each task mentions (beside PARSERS: a label's reading, by task)
CLASS_NAMES: dict[str, Callable[[Any], tuple[str, ...]]] = {
    hp.MULTICLASS: lambda label: (label,),
    hp.MULTILABEL: tuple,
    hp.DETECTION: _box_labels,
    hp.SEGMENTATION: _box_labels,
}


def class_names_of(task: str, label: Any) -> tuple[str, ...]:
    """The class names a parsed label mentions."""
    return CLASS_NAMES.get(task, _box_labels)(label)

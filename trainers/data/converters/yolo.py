"""YOLO (darknet / ultralytics) txt labels -> rows.

Each image ``images/<sub>/x.jpg`` pairs with ``labels/<sub>/x.txt`` (the ultralytics rule: the same path with
``images`` replaced by ``labels``), so ``images/train`` + ``labels/train`` layouts work unchanged. A line is
``cls cx cy w h`` (a box, normalised centre and size) or ``cls x1 y1 x2 y2 x3 y3 ...`` (a segmentation
polygon, normalised). For detection a polygon becomes its bounding box; for segmentation a box becomes a
rectangle polygon (counted in a warning: that mask is only as good as the box). An image without a label
file, or with an empty one, is a negative: that is how YOLO marks background images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import yaml

from trainers import hyperparameters as hp
from trainers.data.converters.rows import IMAGE_SUFFIXES, Row, Warnings, image_size, instance, norm_box
from trainers.errors import DataError


def read(src: Path, task: str, warn: Warnings, names: str | None = None) -> Iterator[Row]:
    """Rows of a folder with ``images/`` and ``labels/``; class names from ``names`` or the folder's
    ``data.yaml`` / ``classes.txt``, else the class ids themselves."""
    images, labels = src / "images", src / "labels"
    if not images.is_dir():
        raise DataError(f"{src}: expected a YOLO folder with images/ and labels/ subfolders (no {images})")
    classes = _names(src, names)
    paired = set()
    for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(images)
        txt = labels / rel.with_suffix(".txt")
        paired.add(txt)
        width, height = image_size(path, str(images))
        label = _label(txt, task, classes, warn) if txt.is_file() else []
        yield Row(path, width, height, label, rel.as_posix())
    if labels.is_dir():
        for txt in sorted(labels.rglob("*.txt")):
            if txt not in paired:
                warn.add(f"ignored label files without an image under {images}", str(txt))


def _names(src: Path, names: str | None) -> list[str] | None:
    """Class names by id: ``--names`` (one per line, or a data.yaml), SRC/data.yaml, SRC/classes.txt."""
    if names:
        path = Path(names)
        if not path.is_file():
            raise DataError(f"--names {names}: file not found")
        return _yaml_names(path) if path.suffix.lower() in (".yaml", ".yml") else _txt_names(path)
    for candidate in ("data.yaml", "data.yml", "dataset.yaml"):
        if (src / candidate).is_file():
            return _yaml_names(src / candidate)
    if (src / "classes.txt").is_file():
        return _txt_names(src / "classes.txt")
    return None


def _txt_names(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _yaml_names(path: Path) -> list[str]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    raw = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(raw, list) and all(isinstance(n, (str, int)) for n in raw):
        return [str(n) for n in raw]
    if isinstance(raw, dict) and all(isinstance(k, int) and k >= 0 for k in raw):
        out = [str(k) for k in range(max(raw) + 1)]
        for k, v in raw.items():
            out[k] = str(v)
        return out
    raise DataError(f"{path}: expected 'names' to be a list of class names or a mapping id -> name, "
                    f"but got {raw!r}")


def _label(txt: Path, task: str, classes: list[str] | None, warn: Warnings) -> list[dict]:
    out = []
    try:
        text = txt.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{txt}: not UTF-8 text ({e.reason}); expected YOLO label lines") from None
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{txt}:{n}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DataError(f"{where}: expected 'class cx cy w h' (5 fields) or a polygon 'class x1 y1 x2 y2 "
                            f"x3 y3 ...' (an odd number of fields, at least 7), but got {len(fields)} fields")
        try:
            values = [float(v) for v in fields[1:]]
            cls = float(fields[0])
        except ValueError:
            raise DataError(f"{where}: expected numbers, but got {line.strip()!r}") from None
        if cls < 0 or not cls.is_integer() or (classes is not None and cls >= len(classes)):
            known = f" (names has {len(classes)} classes: 0..{len(classes) - 1})" if classes is not None else ""
            raise DataError(f"{where}: class id {fields[0]!r} is not a valid class index{known}")
        name = classes[int(cls)] if classes is not None else str(int(cls))
        if len(fields) == 5:
            cx, cy, w, h = values
            if task == hp.SEGMENTATION:
                warn.add("box lines used as rectangle polygons for segmentation", where)
                x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                obj = instance(name, [[x0, y0, x1, y0, x1, y1, x0, y1]])
            else:
                obj = norm_box(name, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif task == hp.SEGMENTATION:
            obj = instance(name, [values])
        else:
            obj = norm_box(name, min(values[0::2]), min(values[1::2]), max(values[0::2]), max(values[1::2]))
        if obj is None:
            warn.add("skipped degenerate objects (no width or height inside the image)", where)
        else:
            out.append(obj)
    return out

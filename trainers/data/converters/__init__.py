"""COCO, Pascal VOC and YOLO datasets -> the project's JSONL + MLTable input (``visionsweep convert``).

Each format has a reader (``coco``, ``voc``, ``yolo``) that yields :class:`~.rows.Row` s with labels already in
the JSONL form that :mod:`trainers.labels` parses; :func:`write_dataset` is the one writer, so every format
produces the same folder: ``OUT/MLTable`` naming ``OUT/train.jsonl``. ``image_url`` is relative to ``OUT``
(``load_records`` resolves relative URLs against the JSONL file's folder), so the images can stay where they
are, and the folder still works when ``OUT`` and the images move together; ``copy_images`` makes ``OUT``
self-contained instead.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from trainers import hyperparameters as hp
from trainers.data.converters import coco, voc, yolo
from trainers.data.converters.rows import Row, Warnings
from trainers.data.tables import mltable_text
from trainers.errors import DataError, VisionsweepError

#: format -> (reader, the tasks it can produce, the reader options it takes)
CONVERTERS: dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...]]] = {
    "coco": (coco.read, (hp.DETECTION, hp.SEGMENTATION), ("images",)),
    "voc": (voc.read, (hp.DETECTION,), ("images",)),
    "yolo": (yolo.read, (hp.DETECTION, hp.SEGMENTATION), ("names",)),
}

JSONL = "train.jsonl"


@dataclass
class Summary:
    images: int
    objects: int
    classes: list[str]
    jsonl: Path
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"wrote {self.images} images, {self.objects} objects, {len(self.classes)} classes "
                f"to {self.jsonl}")


def write_dataset(out_dir: str | os.PathLike, rows: Iterable[Row], copy_images: bool = False,
                  warnings: Iterable[str] = ()) -> Summary:
    """Write ``OUT/train.jsonl`` and ``OUT/MLTable``; with ``copy_images`` also ``OUT/images/<name>``."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise VisionsweepError(f"{out_dir}: the output must be a folder, but it is a file")
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / JSONL
    tmp = out / (JSONL + ".tmp")
    taken: dict[Path, Path] = {}
    n_images = n_objects = 0
    classes: set[str] = set()
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            image = row.image.resolve()
            if copy_images:
                image = _copy(image, row.name, out / "images", taken)
            fmt = image.suffix.lower().lstrip(".")
            line = {"image_url": _relative(image, out),
                    "image_details": {"format": "jpg" if fmt == "jpeg" else fmt,
                                      "width": int(row.width), "height": int(row.height)},
                    "label": row.label}
            f.write(json.dumps(line) + "\n")
            n_images += 1
            n_objects += len(row.label)
            classes.update(o["label"] for o in row.label)
    os.replace(tmp, jsonl)
    (out / "MLTable").write_text(mltable_text(JSONL))
    return Summary(n_images, n_objects, sorted(classes), Path(out_dir) / JSONL, list(warnings))


def _relative(image: Path, out: Path) -> str:
    try:
        return Path(os.path.relpath(image, out)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return image.as_posix()


def _copy(image: Path, name: str, dest_root: Path, taken: dict[Path, Path]) -> Path:
    """Copy to ``dest_root/name`` (the source layout), or a de-duplicated basename if ``name`` escapes."""
    rel = Path(name or image.name)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(image.name)
    dest = dest_root / rel
    stem, n = dest.stem, 1
    while dest in taken and taken[dest] != image:
        dest = dest.with_name(f"{stem}_{n}{dest.suffix}")
        n += 1
    taken[dest] = image
    if dest.resolve() != image:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, dest)
    return dest


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike, task: str = hp.DETECTION,
            copy_images: bool = False, **options) -> Summary:
    """Read ``src`` in format ``fmt`` and write the dataset to ``out``; options: ``images`` / ``names``."""
    if fmt not in CONVERTERS:
        raise VisionsweepError(f"unknown dataset format {fmt!r}; expected one of {', '.join(CONVERTERS)}")
    read, tasks, known = CONVERTERS[fmt]
    if task not in tasks:
        raise VisionsweepError(f"{fmt} datasets convert to {' or '.join(tasks)}, not {task!r}")
    options = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(options) - set(known))
    if extra:
        raise VisionsweepError(f"option(s) {', '.join('--' + e for e in extra)} do not apply to {fmt} datasets")
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: not found")
    warn = Warnings()
    rows = list(read(src, task, warn, **options))
    if not rows:
        raise DataError(f"{src}: no images to convert" + ("".join(f"; {w}" for w in warn.lines())))
    return write_dataset(out, rows, copy_images=copy_images, warnings=warn.lines())


__all__ = ["CONVERTERS", "Row", "Summary", "convert", "write_dataset"]

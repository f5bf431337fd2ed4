"""Pascal VOC XML -> detection rows.

VOC pixel coordinates are 1-based and inclusive (``xmin=1`` is the first pixel column, ``xmax=W`` the last),
so a box covers ``[xmin - 1, xmax]`` in continuous coordinates; without the shift every box would sit half
a pixel to a pixel off. ``difficult`` objects become ``isCrowd``: VOC's evaluation ignores them, and the
project's metric ignores crowd boxes the same way (neither a miss nor a false positive).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from trainers.data.converters.rows import IMAGE_SUFFIXES, Row, Warnings, box, image_size
from trainers.errors import DataError


def read(src: Path, task: str, warn: Warnings, images: str | None = None) -> Iterator[Row]:
    """Rows of a VOC folder (``Annotations/`` + ``JPEGImages/``) or of a folder of XML files and images."""
    if not src.is_dir():
        raise DataError(f"{src}: expected a VOC folder (with Annotations/*.xml and JPEGImages/) "
                        "or a folder of XML files")
    if (src / "Annotations").is_dir():
        xml_dir, default_images = src / "Annotations", src / "JPEGImages"
    else:
        xml_dir, default_images = src, src
    xmls = sorted(xml_dir.glob("*.xml"))
    if not xmls:
        raise DataError(f"{src}: no VOC XML files (expected {src}/Annotations/*.xml or {src}/*.xml)")
    roots = [Path(images)] if images else [default_images, xml_dir]
    for xml in xmls:
        row = _row(xml, roots, warn)
        if row is not None:
            yield row


def _row(xml: Path, roots: list[Path], warn: Warnings) -> Row | None:
    try:
        doc = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml}: not valid XML ({e})") from None
    if doc.tag != "annotation":
        raise DataError(f"{xml}: expected a VOC <annotation> root element, but got <{doc.tag}>")
    file_name = (doc.findtext("filename") or "").strip()
    path = _find(roots, file_name, xml.stem)
    width, height = _size(doc)
    if not (width and height):
        if path is None:
            raise DataError(f"{xml}: no <size> with a positive <width> and <height>, and image "
                            f"{file_name or xml.stem + '.*'} not found under {' or '.join(map(str, roots))}")
        width, height = image_size(path, str(xml))
    if path is None:
        warn.add(f"skipped images not found under {' or '.join(map(str, roots))}", str(xml))
        return None
    label = []
    for i, obj in enumerate(doc.findall("object"), start=1):
        where = f"{xml}: object {i}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{where}: expected a non-empty <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{where} ({name}): expected a <bndbox> with xmin, ymin, xmax, ymax")
        x0, y0, x1, y1 = (_number(bb, k, where) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        b = box(name, x0 - 1, y0 - 1, x1, y1, width, height, crowd=difficult)
        if b is None:
            warn.add("skipped degenerate boxes (no width or height inside the image)", where)
        else:
            label.append(b)
    name = path.relative_to(roots[0]).as_posix() if path.is_relative_to(roots[0]) else path.name
    return Row(path, width, height, label, name)


def _size(doc: ET.Element) -> tuple[int, int]:
    size = doc.find("size")
    if size is None:
        return 0, 0
    try:
        return int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
    except ValueError:
        return 0, 0


def _number(bb: ET.Element, key: str, where: str) -> float:
    text = bb.findtext(key)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected <bndbox><{key}> to be a pixel coordinate, but got {text!r}") from None


def _find(roots: list[Path], file_name: str, stem: str) -> Path | None:
    """The image named by ``<filename>``, else one named like the XML file (``<filename>`` is often stale)."""
    for root in roots:
        if file_name and (root / file_name).is_file():
            return root / file_name
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            if (root / (stem + suffix)).is_file():
                return root / (stem + suffix)
    return None

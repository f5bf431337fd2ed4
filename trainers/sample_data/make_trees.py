#!/usr/bin/env python3
"""Regenerate the bundled tree-crown detection sample under ``trees/``.

Source: the example data that the ``deepforest`` PyPI package (weecology/DeepForest,
MIT licence, version 2.1.0 when this sample was made) ships in ``deepforest/data/``:
RGB airborne images named after NEON sites (YELL, OSBS, SOAP) with Pascal VOC
``.xml`` box annotations of tree crowns (class ``Tree``; ``SOAP_061`` uses
``Alive`` / ``Dead``). Images without a VOC file are ignored.

What it does, deterministically (fixed seed, sorted inputs):
  * cuts every annotated image into 256x256 tiles on a stride-256 grid (full tiles only;
    an axis shorter than two tiles also gets an edge-aligned tile when the rest is >= 128 px);
  * keeps a box in a tile when >= 50 % of its area lies inside it, clipped to the tile,
    with coordinates normalised to [0, 1] and rounded to 6 decimals;
  * keeps every tile with >= 3 boxes, plus ~10 % negatives (tiles without a box, preferring
    tiles that no box touches at all); tiles with 1-2 boxes are dropped, to keep it small;
  * splits by SOURCE image (no leakage): ``VALID_SOURCES`` go to valid, the rest to train.

Writes:
  trees/images/<source>_x<X>_y<Y>.jpg   JPEG, quality 90 (optimised Huffman tables)
  trees/train/                          MLTable + train_annotations.jsonl
  trees/valid/                          MLTable + valid_annotations.jsonl

Needs Pillow. SRC is deepforest's data folder, a folder holding ``deepforest/data``,
or the wheel itself (read in place):

  pip download deepforest==2.1.0 --no-deps -d /tmp/df
  python trainers/sample_data/make_trees.py /tmp/df/deepforest-2.1.0-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import io
import random
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from trainers.data.tables import write_table

OUT_DIR = Path(__file__).resolve().parent / "trees"
SEED = 20240601
TILE = 256
STRIDE = 256
MIN_VISIBLE = 0.5
MIN_BOXES = 3  # a tile with 1..2 boxes is dropped (not kept as a negative either)
NEGATIVE_FRACTION = 0.10
JPEG_QUALITY = 90
# Source images whose tiles form the validation split; everything else is train.
VALID_SOURCES = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029")

class Source:
    """deepforest's data files, from a folder or straight from the wheel."""

    def __init__(self, path: Path):
        self.zip = None
        if path.is_file() and path.suffix == ".whl":
            self.zip = zipfile.ZipFile(path)
            self.names = {PurePosixPath(n).name: n for n in self.zip.namelist()
                          if n.startswith("deepforest/data/") and not n.endswith("/")}
        else:
            folder = path / "deepforest" / "data" if (path / "deepforest" / "data").is_dir() else path
            self.names = {p.name: p for p in folder.iterdir() if p.is_file()}
        if not any(n.endswith(".xml") for n in self.names):
            raise SystemExit(f"{path}: no Pascal VOC .xml files found (expected deepforest's data folder or wheel)")

    def read(self, name: str) -> bytes:
        ref = self.names[name]
        return self.zip.read(ref) if self.zip else Path(ref).read_bytes()


def tile_origins(length: int) -> list[int]:
    out = list(range(0, length - TILE + 1, STRIDE))
    if len(out) == 1 and length - TILE >= TILE // 2:
        out.append(length - TILE)
    return out


def parse_voc(data: bytes) -> tuple[str | None, list[tuple[str, float, float, float, float]]]:
    root = ET.fromstring(data)
    filename = root.findtext("filename")
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 > x0 and y1 > y0:
            boxes.append((obj.findtext("name").strip(), x0, y0, x1, y1))
    return filename, boxes


def boxes_in_tile(boxes, tx: int, ty: int) -> tuple[list[dict], bool]:
    """The tile's labels, and whether any box (kept or not) touches the tile."""
    kept, touched = [], False
    for name, x0, y0, x1, y1 in boxes:
        cx0, cy0 = max(x0, tx), max(y0, ty)
        cx1, cy1 = min(x1, tx + TILE), min(y1, ty + TILE)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        touched = True
        if (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE * (x1 - x0) * (y1 - y0):
            continue
        kept.append({
            "label": name,
            "topX": round((cx0 - tx) / TILE, 6),
            "topY": round((cy0 - ty) / TILE, 6),
            "bottomX": round((cx1 - tx) / TILE, 6),
            "bottomY": round((cy1 - ty) / TILE, 6),
            "isCrowd": False,
        })
    return kept, touched


def open_image(src: Source, stem: str, filename: str | None) -> Image.Image:
    for name in ([filename] if filename else []) + [stem + ext for ext in (".png", ".tif", ".tiff", ".jpg")]:
        if name in src.names:
            return Image.open(io.BytesIO(src.read(name))).convert("RGB")
    raise SystemExit(f"no image for {stem}.xml (filename {filename!r})")




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="deepforest's data folder, a folder holding deepforest/data, or the .whl")
    args = ap.parse_args()
    src = Source(args.src)

    # Cut every annotated image; tiles stay in memory until the negatives are chosen.
    tiles = []  # (source stem, x, y, crop, labels, touched)
    for xml_name in sorted(n for n in src.names if n.endswith(".xml")):
        stem = xml_name[:-4]
        filename, boxes = parse_voc(src.read(xml_name))
        im = open_image(src, stem, filename)
        for ty in tile_origins(im.height):
            for tx in tile_origins(im.width):
                labels, touched = boxes_in_tile(boxes, tx, ty)
                tiles.append((stem, tx, ty, im.crop((tx, ty, tx + TILE, ty + TILE)), labels, touched))

    positives = [t for t in tiles if len(t[4]) >= MIN_BOXES]
    empty = [t for t in tiles if not t[4]]
    n_neg = min(len(empty), round(NEGATIVE_FRACTION * len(positives)))
    rng = random.Random(SEED)
    clean = [t for t in empty if not t[5]]
    partial = [t for t in empty if t[5]]
    negatives = rng.sample(clean, min(n_neg, len(clean)))
    negatives += rng.sample(partial, n_neg - len(negatives))
    chosen = sorted(positives + negatives, key=lambda t: (t[0], t[2], t[1]))

    images_dir = OUT_DIR / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.glob("*.jpg"):
        old.unlink()
    splits: dict[str, list[dict]] = {"train": [], "valid": []}
    for stem, tx, ty, crop, labels, _ in chosen:
        name = f"{stem}_x{tx:04d}_y{ty:04d}.jpg"
        crop.save(images_dir / name, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        split = "valid" if stem in VALID_SOURCES else "train"
        splits[split].append({
            "image_url": f"../images/{name}",
            "image_details": {"format": "jpg", "width": TILE, "height": TILE},
            "label": labels,
        })

    for split, lines in splits.items():
        write_table(OUT_DIR / split, f"{split}_annotations.jsonl", lines)
        boxes = [b["label"] for line in lines for b in line["label"]]
        per_class = {c: boxes.count(c) for c in sorted(set(boxes))}
        negs = sum(1 for line in lines if not line["label"])
        print(f"{split}: {len(lines)} tiles ({negs} without boxes), {len(boxes)} boxes {per_class}")


if __name__ == "__main__":
    main()

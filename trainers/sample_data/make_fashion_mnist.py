#!/usr/bin/env python3
"""Regenerate the bundled Fashion-MNIST sample under ``fashion_mnist/``.

Source: Fashion-MNIST (Zalando Research, MIT licence), as shipped by the Debian
package ``dataset-fashion-mnist`` (IDX gz files in /usr/share/datasets/fashion-mnist).

Writes, deterministically (fixed seed, balanced per class):
  fashion_mnist/images/train_XXXX.png   40 per class from the train split (400)
  fashion_mnist/images/test_XXXX.png    10 per class from the t10k split (100)
  fashion_mnist/train/                  MLTable + train_annotations.jsonl (multi-class)
  fashion_mnist/valid/                  MLTable + valid_annotations.jsonl (the 100 test images)
  fashion_mnist/train_multilabel/       MLTable + train_annotations.jsonl (multi-label)

Pure standard library (gzip, struct, zlib): no numpy / Pillow needed.

Usage:  python trainers/sample_data/make_fashion_mnist.py [--source DIR]
"""
from __future__ import annotations

import argparse
import gzip
import random
import struct
import zlib
from pathlib import Path

from trainers.data.tables import write_table

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT_DIR = Path(__file__).resolve().parent / "fashion_mnist"
SEED = 20240601
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 10

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

MULTILABEL = {
    "T-shirt/top": ["clothing", "upper-body"],
    "Trouser": ["clothing", "lower-body"],
    "Pullover": ["clothing", "upper-body"],
    "Dress": ["clothing", "full-body"],
    "Coat": ["clothing", "upper-body"],
    "Sandal": ["footwear"],
    "Shirt": ["clothing", "upper-body"],
    "Sneaker": ["footwear"],
    "Bag": ["bag"],
    "Ankle boot": ["footwear"],
}

def read_idx_images(path: Path) -> tuple[int, int, bytes]:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        raise ValueError(f"{path}: bad IDX image magic {magic}")
    pixels = data[16:]
    if len(pixels) != n * rows * cols:
        raise ValueError(f"{path}: truncated")
    return rows, cols, pixels


def read_idx_labels(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic != 2049:
        raise ValueError(f"{path}: bad IDX label magic {magic}")
    labels = data[8:]
    if len(labels) != n:
        raise ValueError(f"{path}: truncated")
    return labels


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(ftype: int, row: bytes, prev: bytes) -> bytes:
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - 1] if i else 0
        b = prev[i]
        c = prev[i - 1] if i else 0
        if ftype == 0:
            pred = 0
        elif ftype == 1:
            pred = a
        elif ftype == 2:
            pred = b
        elif ftype == 3:
            pred = (a + b) // 2
        else:
            pred = _paeth(a, b, c)
        out[i] = (x - pred) & 0xFF
    return bytes([ftype]) + bytes(out)


def png_gray8(width: int, height: int, pixels: bytes) -> bytes:
    """Encode an 8-bit grayscale PNG, trying each filter strategy and keeping the smallest."""
    rows = [pixels[y * width:(y + 1) * width] for y in range(height)]
    zero = bytes(width)
    best = None
    for ftype in range(5):
        raw = b"".join(_filter_row(ftype, r, rows[y - 1] if y else zero) for y, r in enumerate(rows))
        comp = zlib.compress(raw, 9)
        if best is None or len(comp) < len(best):
            best = comp

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", best) + chunk(b"IEND", b"")


def sample_balanced(labels: bytes, per_class: int, rng: random.Random) -> list[int]:
    chosen: list[int] = []
    for cls in range(len(CLASS_NAMES)):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        chosen.extend(rng.sample(idx, per_class))
    return sorted(chosen)  # source order -> classes interleaved


def write_split(prefix: str, images_path: Path, labels_path: Path, per_class: int,
                rng: random.Random, images_dir: Path) -> list[tuple[str, str]]:
    rows, cols, pixels = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    size = rows * cols
    records = []
    for n, src in enumerate(sample_balanced(labels, per_class, rng)):
        name = f"{prefix}_{n:04d}.png"
        (images_dir / name).write_bytes(png_gray8(cols, rows, pixels[src * size:(src + 1) * size]))
        records.append((name, CLASS_NAMES[labels[src]]))
    return records




def line(name: str, label) -> dict:
    return {
        "image_url": f"../images/{name}",
        "image_details": {"format": "png", "width": 28, "height": 28},
        "label": label,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                    help="folder with the Fashion-MNIST IDX .gz files (default: %(default)s)")
    args = ap.parse_args()

    images_dir = OUT_DIR / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.glob("*.png"):
        old.unlink()

    rng = random.Random(SEED)
    train = write_split("train", args.source / "train-images-idx3-ubyte.gz",
                        args.source / "train-labels-idx1-ubyte.gz", TRAIN_PER_CLASS, rng, images_dir)
    test = write_split("test", args.source / "t10k-images-idx3-ubyte.gz",
                       args.source / "t10k-labels-idx1-ubyte.gz", TEST_PER_CLASS, rng, images_dir)

    write_table(OUT_DIR / "train", "train_annotations.jsonl", [line(n, c) for n, c in train])
    write_table(OUT_DIR / "valid", "valid_annotations.jsonl", [line(n, c) for n, c in test])
    write_table(OUT_DIR / "train_multilabel", "train_annotations.jsonl",
                  [line(n, MULTILABEL[c]) for n, c in train])
    print(f"wrote {len(train)} train + {len(test)} test images to {OUT_DIR}")


if __name__ == "__main__":
    main()

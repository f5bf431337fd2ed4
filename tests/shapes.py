"""A tiny synthetic detection / instance-segmentation dataset for end-to-end tests: bright discs and
squares on a dark noisy background, with exact boxes and polygons, written as JSONL + MLTable.

Real data (the bundled tree tiles) is too large for a detector to learn on CPU within a test; these
shapes are learnt in a few epochs at 64 px, so a sweep's metric moves and a policy has something to judge.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainers.data.tables import write_table

CLASSES = ("disc", "square")


def _shape(rng, size: int, classes=CLASSES, scale=(0.12, 0.22)):
    cls = classes[int(rng.integers(len(classes)))]
    r = float(rng.uniform(size * scale[0], size * scale[1]))
    cx, cy = (float(rng.uniform(r + 1, size - r - 1)) for _ in range(2))
    if cls == "disc":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)]
    else:
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return cls, pts


def write_shapes(root: Path, n_train: int = 24, n_valid: int = 8, size: int = 64, seed: int = 0,
                 segmentation: bool = False, classes=CLASSES, scale=(0.12, 0.22),
                 per_image=(1, 2)) -> tuple[Path, Path]:
    """Writes ``root/images``, ``root/train`` and ``root/valid`` (MLTable folders); returns the two folders."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        d = root / split
        d.mkdir(exist_ok=True)
        lines = []
        for i in range(n):
            noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            im = Image.fromarray(noise)
            draw = ImageDraw.Draw(im)
            labels = []
            for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
                cls, pts = _shape(rng, size, classes, scale)
                draw.polygon(pts, fill=(230, 60, 60) if cls == "disc" else (60, 90, 230))
                norm = [round(min(1.0, max(0.0, v / size)), 6) for p in pts for v in p]
                xs, ys = norm[0::2], norm[1::2]
                if segmentation:
                    labels.append({"label": cls, "isCrowd": False, "polygon": [norm]})
                else:
                    labels.append({"label": cls, "topX": min(xs), "topY": min(ys), "bottomX": max(xs),
                                   "bottomY": max(ys), "isCrowd": False})
            name = f"{split}_{i:03d}.png"
            im.save(root / "images" / name)
            lines.append({"image_url": f"../images/{name}",
                          "image_details": {"format": "png", "width": size, "height": size}, "label": labels})
        write_table(d, f"{split}.jsonl", lines)
        out.append(d)
    return out[0], out[1]

"""``visionsweep convert``: a COCO / Pascal VOC / YOLO dataset to an MLTable folder (``trainers.data.converters``)."""

from __future__ import annotations

import sys

from trainers.hyperparameters import DETECTION, SEGMENTATION


def _convert(args) -> int:
    from trainers.data.converters import convert

    summary = convert(args.format, args.src, args.out, args.task, copy_images=args.copy_images,
                      images=args.images, names=args.names)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summary.line())
    return 0


def add_parsers(sub) -> None:
    c = sub.add_parser("convert", help="convert a COCO / Pascal VOC / YOLO dataset to an MLTable folder (JSONL)")
    c.add_argument("format", choices=("coco", "voc", "yolo"))
    c.add_argument("src", help="coco: the annotation JSON; voc: the VOC folder; yolo: a folder with images/, labels/")
    c.add_argument("out", help="output folder: OUT/MLTable and OUT/train.jsonl (image_url relative to OUT)")
    c.add_argument("--task", choices=(DETECTION, SEGMENTATION), default=DETECTION)
    c.add_argument("--images", metavar="DIR", help="coco/voc: the image folder (default: next to the annotations)")
    c.add_argument("--names", metavar="FILE",
                   help="yolo: class names, one per line (default: SRC/data.yaml or SRC/classes.txt, else the ids)")
    c.add_argument("--copy-images", action="store_true", help="copy the images into OUT/images/")
    c.set_defaults(fn=_convert)

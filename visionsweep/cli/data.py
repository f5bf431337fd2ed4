"""``visionsweep convert``: a COCO / Pascal VOC / YOLO dataset to an MLTable folder (``trainers.data.converters``);
``visionsweep check-data``: a job's data checked before any training (``scheduler.data_check``)."""

from __future__ import annotations

import json
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


def _check_data(args) -> int:
    from scheduler import data_check
    from scheduler.data_check.job import check_job_data
    from scheduler.joblog import apply_job_logging
    from scheduler.spec import load_job
    from visionsweep.cli.common import echo

    job = load_job(args.job)
    apply_job_logging(job)
    findings = check_job_data(job, "deep" if args.deep else "standard", echo=echo, datastores=args.datastores,
                              data_assets=args.data_assets)
    if args.json:
        print(json.dumps(findings, indent=2))
        return 0
    print(data_check.summary_line(findings))
    print(data_check.details(findings))
    return 0


def add_parsers(sub) -> None:
    k = sub.add_parser("check-data", help="check a job's data before training: duplicates, train/validation leaks, "
                                          "balance, boxes; --deep: likely wrong labels too")
    k.add_argument("job", help="the job YAML (its training_data, validation_data and split, as run reads them)")
    k.add_argument("--json", action="store_true", help="print the findings as one JSON document on stdout")
    k.add_argument("--deep", action="store_true", help="also find likely wrong labels (classification: a pretrained "
                                                      "backbone's features and confident learning)")
    k.add_argument("--datastores", metavar="FILE", help="datastore definitions, as for run")
    k.add_argument("--data-assets", metavar="FILE", help="data asset definitions, as for run")
    k.set_defaults(fn=_check_data)

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

"""The model package commands: ``predict`` (``serving.offline.predict_files``) and ``export``
(``trainers.package.exporting.export_package``). Both print JSON or one line on stdout and run their libraries
with stdout sent to stderr (:func:`~visionsweep.cli.common.stdout_to_stderr`)."""

from __future__ import annotations

import json
import sys

from visionsweep.cli.common import parse_settings, stdout_to_stderr


def _predict(args) -> int:
    from serving.offline import predict_files
    from trainers.data import storage

    with stdout_to_stderr():
        out = predict_files(args.package, args.images, device=args.device, settings=parse_settings(args.setting),
                            format=args.format, coco_gt=args.coco_gt, draw=args.draw)
    if args.draw:
        print(f"drew {len(args.images)} images to {args.draw}", file=sys.stderr)
    text = json.dumps(out.results, indent=None if args.compact else 2)
    if args.output:
        storage.write_bytes(args.output, (text + "\n").encode())
        print(f"wrote {len(out.results)} {'results' if args.format == 'coco' else 'responses'} to {args.output}")
    else:
        print(text)
    return 0


def _export(args) -> int:
    from trainers.package.exporting import export_package

    norm = None if args.onnx_normalization is None else args.onnx_normalization == "true"
    options = dict(batch_size=args.batch_size, normalization=norm, image_size=args.image_size,
                   settings=parse_settings(args.setting))
    if args.int8:
        options.update(keep_below_tolerance=args.int8_keep, **({"calibration_images": args.calibration}
                                                                if args.calibration else {}))
    else:
        options["check"] = not args.no_check
    with stdout_to_stderr():
        written = export_package(args.package, args.output, int8=args.int8, **options)
    print(written.line())
    return 0


def add_parsers(sub) -> None:
    pr = sub.add_parser("predict", help="predict images with a model package (e.g. RUN_DIR/best)")
    pr.add_argument("package")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pr.add_argument("--compact", action="store_true", help="one-line JSON")
    pr.add_argument("--setting", action="append", metavar="NAME=VALUE",
                    help="override an inference setting of the package (§9.5), e.g. tile_grid_size=3x2; repeatable")
    pr.add_argument("--format", choices=("response", "coco"), default="response",
                    help="response: the endpoint's JSON (§15); coco: COCO results JSON of the boxes (and masks)")
    pr.add_argument("--coco-gt", metavar="ANNOTATIONS", help="with --format coco: take image and category ids "
                    "from this COCO annotation file (matched by file name and class name)")
    pr.add_argument("--output", "-o", metavar="FILE", help="write the JSON to FILE instead of stdout")
    pr.add_argument("--draw", metavar="OUTDIR", help="also write each image with its predictions drawn on it "
                    "(labels and scores, boxes, masks) as OUTDIR/<image stem>.png; OUTDIR: a folder or storage URL")
    pr.set_defaults(fn=_predict)
    ex = sub.add_parser("export", help="export a model package to ONNX (the service's input/output conventions)")
    ex.add_argument("package")
    ex.add_argument("--format", choices=("onnx",), default="onnx")
    ex.add_argument("--output", "-o", metavar="FILE", help="default: PACKAGE/model.onnx (plus FILE.json)")
    ex.add_argument("--batch-size", type=int, default=1,
                    help="classification: the traced batch (the batch axis stays dynamic); detection: images per call")
    ex.add_argument("--image-size", metavar="HxW", help="detection input size (default 600x800)")
    ex.add_argument("--onnx-normalization", choices=("true", "false"),
                    help="classification: normalise inside the graph (default: the package's "
                         "enable_onnx_normalization)")
    ex.add_argument("--setting", action="append", metavar="NAME=VALUE",
                    help="override an inference setting baked into the graph (§9.5), e.g. box_score_threshold=0.2")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with the package")
    ex.add_argument("--int8", action="store_true",
                    help="an INT8 model (onnxruntime's static quantisation, calibrated on the package's training "
                         "images, or --calibration), default PACKAGE/model.int8.onnx, beside the fp32 model it is "
                         "quantised from; refused when its top-1 agreement with the package is under 95 %%")
    ex.add_argument("--int8-keep", action="store_true", help="with --int8: keep a model under that tolerance")
    ex.add_argument("--calibration", nargs="+", metavar="IMAGE",
                    help="with --int8: the calibration images (default: the package's run's training images)")
    ex.set_defaults(fn=_export)

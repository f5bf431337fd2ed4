"""``visionsweep``: the command line.

    visionsweep run JOB.yml [--output DIR]      run a job on Ray (RAY_ADDRESS, or an embedded local Ray)
    visionsweep resume RUN_DIR                  continue a sweep whose controller died or was cancelled
    visionsweep report RUN_DIR                  (re)write RUN_DIR/report.html
    visionsweep status RUN_DIR [--watch]        the trials and progress of a running or finished sweep
    visionsweep validate JOB.yml                check a job file and print it as it would run
    visionsweep predict PACKAGE IMAGE...        print the response JSON for images (§15); --format coco
                                                for COCO results JSON, --setting NAME=VALUE overrides,
                                                --draw OUTDIR the images with their predictions drawn
    visionsweep serve PACKAGE                   serve a model package over HTTP until Ctrl-C
    visionsweep endpoint ... / deployment ...   keyed endpoints with weighted deployments (serving.cli)
    visionsweep demo [--output DIR]             the embedded default: sweeps, leaderboards, serving
    visionsweep convert coco|voc|yolo SRC OUT   a COCO / Pascal VOC / YOLO dataset -> OUT/MLTable + train.jsonl
    visionsweep weights list|pull|verify        the pretrained weights manifest; fill and check weights stores

User errors print one clear message and exit with status 2; no traceback. What the CLI prints and
logs shows credentials as ``***`` (:func:`scheduler.spec.redact`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import yaml

from scheduler.joblog import REDACTION, apply_job_logging
from trainers.errors import VisionsweepError
from trainers.logs import FORMAT


def _echo(s: str) -> None:
    print(REDACTION.redact(s), file=sys.stderr, flush=True)


def _print_notes(job, prefix: str = "", file=None) -> None:
    for note in job.notes():
        print(f"{prefix}note: {note}", file=file)
    for warning in job.warnings():
        print(f"{prefix}warning: {warning}", file=file)


def _run(args) -> int:
    from scheduler.controller import run_job
    from scheduler.spec import load_job

    job = load_job(args.job)
    apply_job_logging(job)
    _print_notes(job, file=sys.stderr)
    result = run_job(job, args.output, echo=_echo, datastores=args.datastores, data_assets=args.data_assets)
    _print_result(result, job.primary_metric)
    return 0


def _print_result(result, primary: str) -> None:
    from scheduler.leaderboard import format_table

    print(format_table(result.rows, primary))
    where = REDACTION.redact(result.location or str(result.run_dir))
    print(f"\nrun folder: {where}")
    if result.best_trial:
        print(f"best trial: {result.best_trial} ({primary} {result.best_metric:.4f}); "
              f"model package: {where}/best")
    print(f"report: {where}/report.html")
    print(f"time: {result.elapsed_s:.1f}s" + (" (stopped at timeout_minutes)" if result.timed_out else ""))


def _resume(args) -> int:
    from scheduler.controller import resume_run

    result = resume_run(args.run_dir, echo=_echo)
    _print_result(result, json.loads((result.run_dir / "summary.json").read_text())["primary_metric"])
    return 0


def _report(args) -> int:
    from scheduler.report import write_report
    from scheduler.runstore import RunStore

    store = RunStore.at(args.run_dir)  # a storage URL: its own files (not the models) are staged here first
    store.pull(skip=("best", "outputs"))
    if not (store.local / "trials").is_dir():
        raise VisionsweepError(f"{store.where}: not a visionsweep run folder (no trials/)")
    path = write_report(store.local)
    store.push()
    print(f"{store.remote}/{path.name}" if store.remote else path)
    return 0


def _status(args) -> int:
    from scheduler.status import show_status

    return show_status(args.run_dir, watch=args.watch, as_json=args.json, interval_s=args.interval, limit=args.limit)


def _validate(args) -> int:
    import yaml

    from scheduler.preflight import check_before_trials
    from scheduler.spec import check_data_paths, load_job

    job = load_job(args.job)
    REDACTION.add(job.secrets())
    check_data_paths(job)
    weights = check_before_trials(job)  # what `run` refuses before any trial (the models, their weights)
    _print_notes(job, prefix="# ")  # as YAML comments: the output stays a YAML document
    for line in weights:
        print(f"# {REDACTION.redact(line)}")
    print(yaml.safe_dump(job.resolved(), sort_keys=False), end="")
    return 0


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise VisionsweepError(f"{path}: cannot read the image ({e.strerror})") from None


@contextlib.contextmanager
def _stdout_to_stderr():
    """Everything written to stdout inside the block goes to stderr: the file descriptor (C code, subprocesses)
    and ``sys.stdout`` (prints, and loggers created inside the block, such as mmengine's, which binds the stream
    it finds). Commands that print JSON run their libraries in it, so that stdout carries their JSON only."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _predict(args) -> int:
    from serving.predictor import Predictor
    from trainers.data import storage
    from trainers.data.urls import is_remote

    with _stdout_to_stderr():
        predictor = Predictor(args.package, device=args.device, settings=_settings(args.setting))
        images = [_read(p) for p in args.images]
        out = predictor.predict_images(images)
    if args.draw:  # from the §15 responses, whatever --format prints; stdout stays the JSON alone
        from serving.draw import save_drawings

        save_drawings(images, args.images, out, args.draw, predictor.labels, predictor.task.multi)
        print(f"drew {len(images)} images to {args.draw}", file=sys.stderr)
    if args.format == "coco":
        from PIL import Image

        from serving.coco_results import to_coco_results

        sizes = [Image.open(io.BytesIO(b)).size for b in images]
        out = to_coco_results(out, args.images, sizes, predictor.labels, gt=args.coco_gt)
    else:  # each response names its image first (§15's objects otherwise as the endpoint returns them)
        out = [{"filename": name, **r} for name, r in zip(args.images, out)]
    text = json.dumps(out, indent=None if args.compact else 2)
    if args.output:
        if is_remote(args.output):
            storage.write_bytes(args.output, (text + "\n").encode())
        else:
            Path(args.output).write_text(text + "\n")
        print(f"wrote {len(out)} {'results' if args.format == 'coco' else 'responses'} to {args.output}")
    else:
        print(text)
    return 0


def _settings(pairs: list[str] | None) -> dict[str, object]:
    """``--setting name=value`` inference-setting overrides (§9.5); values are read as YAML scalars."""
    out: dict[str, object] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise VisionsweepError(f"--setting {pair!r}: expected NAME=VALUE, e.g. box_score_threshold=0.5")
        out[name.strip()] = yaml.safe_load(value)
    return out


def _demo(args) -> int:
    from scheduler.demo import run_demo

    return run_demo(args.output)


def _convert(args) -> int:
    from trainers.data.converters import convert

    summary = convert(args.format, args.src, args.out, args.task, copy_images=args.copy_images,
                      images=args.images, names=args.names)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summary.line())
    return 0


def _export(args) -> int:
    from trainers.data import storage
    from trainers.data.urls import is_remote
    from trainers.package.onnx import export_onnx

    norm = None if args.onnx_normalization is None else args.onnx_normalization == "true"
    target = args.output or (f"{args.package.rstrip('/')}/model.onnx" if is_remote(args.package) else None)
    with tempfile.TemporaryDirectory(prefix="visionsweep-onnx-") as tmp:
        # a storage URL (given, or the default beside a package on storage): written here, then uploaded
        local = str(Path(tmp) / "model.onnx") if target and is_remote(target) else target
        with _stdout_to_stderr():
            r = export_onnx(args.package, local, batch_size=args.batch_size, normalization=norm,
                            image_size=args.image_size, check=not args.no_check, settings=_settings(args.setting))
        where = str(r.path)
        if target and is_remote(target):
            for suffix in ("", ".json"):
                storage.write_bytes(target + suffix, Path(str(r.path) + suffix).read_bytes())
            where = target
    check = "" if r.max_abs_diff is None else f"; onnxruntime vs PyTorch: max |diff| {r.max_abs_diff:.2e}"
    print(f"wrote {where} and {where}.json ({r.metadata['task']}, {r.metadata['model_name']}, "
          f"input {r.metadata['input']['name']} {r.metadata['input']['shape']}{check})")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionsweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionsweep", description="AutoML for computer vision on your own Ray cluster.")
    p.add_argument("--version", action="version", version=f"visionsweep {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a job YAML (the managed service's AutoML image job, unchanged)")
    r.add_argument("job")
    r.add_argument("--output", "-o", help="run folder (default: runs/<name>-<time>)")
    r.add_argument("--datastores", metavar="FILE",
                   help="YAML map of datastore name -> storage URL for azureml://.../datastores/<name>/paths/... "
                        "URLs (default: $VISIONSWEEP_DATASTORES)")
    r.add_argument("--data-assets", metavar="FILE",
                   help="YAML map of '<name>:<version>' -> path or storage URL for data paths azureml:<name>:<version> "
                        "and azureml:<name>@latest (default: $VISIONSWEEP_DATA_ASSETS)")
    r.set_defaults(fn=_run)
    rs = sub.add_parser("resume", help="continue a sweep whose controller died or was cancelled")
    rs.add_argument("run_dir")
    rs.set_defaults(fn=_resume)
    rp = sub.add_parser("report", help="(re)write RUN_DIR/report.html, the sweep report")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=_report)
    st = sub.add_parser("status", help="a sweep's trials and progress (state, epoch, metric, policy decision, ETA)")
    st.add_argument("run_dir", help="a run folder, or its storage URL (az://..., s3://...)")
    st.add_argument("--watch", "-w", action="store_true", help="keep it updated until the sweep ends (Ctrl-C leaves)")
    st.add_argument("--json", action="store_true", help="print JSON only (with --watch: one document a line)")
    st.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between updates (--watch)")
    st.add_argument("--limit", type=int, default=30, metavar="N", help="trials shown in the table (running first, "
                    "then the best)")
    st.set_defaults(fn=_status)
    v = sub.add_parser("validate", help="check a job YAML and print it as it would run")
    v.add_argument("job")
    v.set_defaults(fn=_validate)
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
    ex.set_defaults(fn=_export)
    from scheduler.weights_cli import add_parsers as add_weights_parsers
    from serving.cli import add_parsers

    add_parsers(sub)
    add_weights_parsers(sub)
    d = sub.add_parser("demo", help="run the embedded default job on the bundled data, then predict")
    d.add_argument("--output", "-o", default=None)
    d.set_defaults(fn=_demo)
    from trainers.hyperparameters import DETECTION, SEGMENTATION

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
    return p


def process_defaults() -> None:
    """Logging (warnings to stderr, credentials as ``***`` in every record) and Ray settings of a process that runs
    sweeps: the CLI, and ``visionsweep.run`` in a notebook."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)  # a no-op where the process set up its own logging
    for handler in logging.getLogger().handlers:
        if REDACTION not in handler.filters:
            handler.addFilter(REDACTION)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the sweep's state often: `visionsweep resume` can only continue from the last snapshot.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")


def main(argv: list[str] | None = None) -> int:
    process_defaults()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except VisionsweepError as e:
        print(f"error: {REDACTION.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or scheduler.stops.Cancelled (SIGINT or SIGTERM): 128 + the signal
        said = getattr(e, "detailed", False)
        print(REDACTION.redact(str(e)) if said else _CANCELLED.get(args.command, f"cancelled: {args.command} did "
                                                                                 "not finish"), file=sys.stderr)
        return getattr(e, "exit_code", 130)


# What Ctrl-C leaves behind, per command (the serving commands say it themselves: serving.cli)
_CANCELLED = {
    "run": "cancelled; finished trials are kept in the run folder (`visionsweep resume RUN` goes on)",
    "resume": "cancelled; finished trials are kept in the run folder (`visionsweep resume RUN` goes on)",
    "predict": "cancelled: no predictions were printed or written",
    "export": "cancelled: the export was not written",
    "report": "cancelled: report.html is as it was (it is replaced whole, never half-written)",
    "convert": "cancelled: the output folder may hold part of the conversion; run it again",
    "demo": "cancelled; the demo's finished sweeps are kept in their run folders",
}


if __name__ == "__main__":
    sys.exit(main())

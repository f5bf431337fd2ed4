"""``visionsweep``: the command line, one module per command group.

    visionsweep run JOB.yml [--output DIR]      run a job on Ray (RAY_ADDRESS, or an embedded local Ray)
    visionsweep resume RUN_DIR                  continue a sweep whose controller died or was cancelled
    visionsweep report RUN_DIR                  (re)write RUN_DIR/report.html
    visionsweep status RUN_DIR [--watch]        the trials and progress of a running or finished sweep
    visionsweep validate JOB.yml                check a job file and print it as it would run
    visionsweep demo [--output DIR]             the embedded default: sweeps, leaderboards, serving
                                                (those six: visionsweep.cli.sweeps)
    visionsweep predict PACKAGE IMAGE...        print the response JSON for images (§15); --format coco
                                                for COCO results JSON, --setting NAME=VALUE overrides,
                                                --draw OUTDIR the images with their predictions drawn
    visionsweep export PACKAGE                  the package as ONNX (visionsweep.cli.models, with predict)
    visionsweep serve PACKAGE                   serve a model package over HTTP until Ctrl-C
    visionsweep endpoint ... / deployment ...   keyed endpoints with weighted deployments (visionsweep.cli.serving)
    visionsweep convert coco|voc|yolo SRC OUT   a COCO / Pascal VOC / YOLO dataset -> OUT/MLTable + train.jsonl
    visionsweep weights list|pull|verify        the pretrained weights manifest; fill and check weights stores

Each command parses its arguments and calls a library function (in ``scheduler``, ``serving`` or ``trainers``)
that the Python API calls too; no library module imports this package. User errors print one clear message and
exit with status 2; no traceback. What the CLI prints and logs shows credentials as ``***``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from scheduler.joblog import REDACTION, process_defaults
from trainers.errors import VisionsweepError

# What Ctrl-C leaves behind, per command (the serving commands say it themselves: visionsweep.cli.serving)
CANCELLED = {
    "run": "cancelled; finished trials are kept in the run folder (`visionsweep resume RUN` goes on)",
    "resume": "cancelled; finished trials are kept in the run folder (`visionsweep resume RUN` goes on)",
    "predict": "cancelled: no predictions were printed or written",
    "export": "cancelled: the export did not finish (with --int8 the fp32 model it quantises may be written "
              "already, beside the output)",
    "report": "cancelled: report.html is as it was (it is replaced whole, never half-written)",
    "convert": "cancelled: the output folder may hold part of the conversion; run it again",
    "demo": "cancelled; the demo's finished sweeps are kept in their run folders",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionsweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from visionsweep.cli import data, models, serving, sweeps, weights

    p = argparse.ArgumentParser(prog="visionsweep", description="AutoML for computer vision on your own Ray cluster.")
    p.add_argument("--version", action="version", version=f"visionsweep {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (sweeps, models, serving, weights, data):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line's entry (``argv`` None: this process's arguments, and the process ends with the command)."""
    try:
        return _main(argv)
    finally:
        if argv is None:
            _before_exit()


def _before_exit() -> None:
    """The process is about to end: its objects are left out of the interpreter's last garbage collections. After a
    sweep those walked Ray Tune's, MLflow's and torch's objects for 2.5 s after the command had printed its result
    (measured on the bench job, bench/RESULTS.md, issue 28); with the objects frozen the process ends in 0.4 s.
    Files are closed by the code that wrote them and the standard streams are flushed at exit, as before."""
    import gc

    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()


def _main(argv: list[str] | None) -> int:
    # Ctrl-C is the command's own, however it was started: a process started in the background of a script (``cmd &``,
    # CI runners, some process managers) inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt,
    # so a later SIGINT would be lost on the commands that rely on it (predict, export, endpoint, deployment ...);
    # run and resume install their own handler anyway (scheduler.stops)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    process_defaults()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except VisionsweepError as e:
        print(f"error: {REDACTION.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or scheduler.stops.Cancelled (SIGINT or SIGTERM): 128 + the signal
        said = getattr(e, "detailed", False)
        print(REDACTION.redact(str(e)) if said else CANCELLED.get(args.command, f"cancelled: {args.command} did "
                                                                                "not finish"), file=sys.stderr)
        return getattr(e, "exit_code", 130)

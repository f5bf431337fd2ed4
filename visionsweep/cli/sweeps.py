"""The sweep commands: ``run``, ``resume``, ``report``, ``status``, ``validate`` and ``demo``. Each parses its
arguments and calls the library function the Python API calls too (``scheduler.controller.run_job`` ...)."""

from __future__ import annotations

import json
import sys

from scheduler.joblog import REDACTION, apply_job_logging
from trainers.errors import VisionsweepError
from visionsweep.cli.common import echo, print_notes


def _run(args) -> int:
    from scheduler.controller import run_job
    from scheduler.spec import load_job

    job = load_job(args.job)
    apply_job_logging(job)
    print_notes(job, file=sys.stderr)
    result = run_job(job, args.output, echo=echo, datastores=args.datastores, data_assets=args.data_assets,
                     release_ray=True)
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

    result = resume_run(args.run_dir, echo=echo, release_ray=True)
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
    print_notes(job, prefix="# ")  # as YAML comments: the output stays a YAML document
    for line in weights:
        print(f"# {REDACTION.redact(line)}")
    print(yaml.safe_dump(job.resolved(), sort_keys=False), end="")
    return 0


def _demo(args) -> int:
    from scheduler.demo import run_demo

    return run_demo(args.output)


def add_parsers(sub) -> None:
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
    d = sub.add_parser("demo", help="run the embedded default job on the bundled data, then predict")
    d.add_argument("--output", "-o", default=None)
    d.set_defaults(fn=_demo)

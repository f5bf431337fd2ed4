"""What to deploy: after the sweep, the best trials' PyTorch, ONNX and INT8 forms measured on the validation set
with the task's metric, and for latency and throughput on this machine (``trainers.package.forms``), written to
``RUN/deployment.json``; the report's "What to deploy" section reads it.

A sweep ranks trials by the PyTorch model's validation metric in fp32; a team often deploys an ONNX or INT8 model on
CPUs. This says, per trial and form, what that costs in accuracy and buys in latency, flags a form that scores below
its package by more than the stated tolerance (``trainers.package.forms.TOLERANCE``), and applies
``visionsweep.max_latency_ms``: a trial whose ``latency_form`` takes longer than that at batch 1 (p50) is marked in
the leaderboard and never chosen as the best model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from scheduler.runstore import RunStore

FILE = "deployment.json"
OFF_ENV = "VISIONSWEEP_DEPLOY_FIGURES"  # 0: no figures (the test suite's default; a job's deploy_top_k: 0 alike)
MAX_IMAGES = 500  # validation images each form is scored on (a seeded sample of larger sets)
CALIBRATION_IMAGES = 64  # training images the INT8 form is calibrated on (more moved agreement by ~2 points)

log = logging.getLogger(__name__)


def enabled(top_k: int, max_latency_ms: float | None) -> bool:
    if os.environ.get(OFF_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return top_k > 0 or max_latency_ms is not None


def warm_imports() -> threading.Thread | None:
    """Import what the figures run on (torch, torchvision, scikit-learn, onnx, onnxruntime, the tasks: 3-4 s of CPU
    on a 2-core machine) in a background thread of the driver at the lowest CPU priority, while the sweep runs: it
    takes only the CPU the trials leave idle (their starts, their waits), and the figures after the sweep start at
    once. Linux only, where a thread has a nice value of its own (elsewhere the process's would be lowered: the
    figures then import when they start). Measured on the bench job: the figures' phase 6.2-6.9 s -> 2.9-3.2 s, the
    trials' phase unchanged (bench/RESULTS.md, issue 28). A failed import is left for the figures to meet."""
    if not sys.platform.startswith("linux"):
        return None

    def work() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            import onnxruntime.quantization  # noqa: F401

            import trainers.package.forms  # noqa: F401
            import trainers.package.int8  # noqa: F401
        except Exception:  # noqa: BLE001
            log.debug("warming the deployment figures' imports", exc_info=True)

    t = threading.Thread(target=work, name="visionsweep-figures-imports", daemon=True)
    t.start()
    return t


def measure_trials(store: RunStore, rows: list[dict[str, Any]], primary: str, task: str, *, top_k: int = 3,
                   max_latency_ms: float | None = None, latency_form: str = "onnx", images=None,
                   budget_s: float | None = None,
                   echo: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Measure the forms of the best trials (``rows``: the leaderboard, best first); returns what
    ``RUN/deployment.json`` is to hold (:func:`write`), or None when there are no validation images or no trial
    with a checkpoint. With ``max_latency_ms``, trials are measured best first until ``top_k`` are and one fits
    (every trial, if none does). ``images``: the job's ``ImageStore``.

    ``budget_s``: the seconds the figures may take (the job's ``deploy_time_share`` of its time so far). The best
    trial is always measured; each further one only where the figures so far plus the last trial's cost stay within
    it, so that a short job is not doubled by them; a trial left out is listed in ``not_measured`` with why. Until a
    trial fits ``max_latency_ms`` the budget does not stop them (no trial could be chosen as best otherwise)."""
    from scheduler.predictions import run_image_url
    from scheduler.runstore import best_checkpoint
    from trainers.data import load_records
    from trainers.data.images import ImageStore
    from trainers.package import copy_package
    from trainers.package.forms import FORMS, TOLERANCE, measure_package
    from trainers.package.int8 import image_urls, seeded_sample

    run_dir = store.local
    valid = run_dir / "data" / "valid.jsonl"
    if not valid.is_file():
        return None
    records = load_records(str(valid), task, "label")
    records = seeded_sample(records, MAX_IMAGES)
    reader = images or ImageStore()
    pairs, unreadable = [], 0
    for r in records:
        try:
            pairs.append((reader.image(run_image_url(r.image_url, run_dir)), r))
        except Exception:  # noqa: BLE001 - an unreadable image is counted, not fatal
            unreadable += 1
    if not pairs:
        return None
    train = run_dir / "data" / "train.jsonl"
    calibration = [run_image_url(u, run_dir)
                   for u in seeded_sample(image_urls(train) if train.is_file() else [], CALIBRATION_IMAGES)]
    trials, over, skipped = [], [], []
    fits_found = max_latency_ms is None
    started, last_cost = time.perf_counter(), 0.0
    for rank, row in enumerate([r for r in rows if r.get(primary) is not None], 1):
        if len(trials) + len(skipped) >= top_k and fits_found:
            break
        spent = time.perf_counter() - started
        if trials and fits_found and budget_s is not None and spent + last_cost > budget_s:
            skipped.append({"trial_id": row["trial_id"], "rank": rank, "model_name": row.get("model_name"),
                            "why": f"the figures had taken {spent:.1f} s and one more trial takes about "
                                   f"{last_cost:.1f} s, over the {budget_s:.1f} s they may take "
                                   "(visionsweep.deploy_time_share of the job's time)"})
            continue
        ck = best_checkpoint(store, row["trial_id"], primary)
        if ck is None:
            continue
        t_trial = time.perf_counter()
        if echo:
            echo(f"measuring trial {row['trial_id']} ({row.get('model_name')}) as PyTorch, ONNX and INT8 on "
                 f"{len(pairs)} validation images")
        with tempfile.TemporaryDirectory(prefix=".deploy-", dir=run_dir) as tmp:
            if store.remote is None:  # the checkpoint is a package folder on this machine: measured where it is
                package = Path(ck)
            else:
                store.download(ck, Path(tmp) / "ckpt")
                package = copy_package(Path(tmp) / "ckpt", Path(tmp) / "pkg")
            figures = measure_package(package, pairs, primary, Path(tmp) / "exports", forms=FORMS,
                                      calibration=calibration)
        forms = []
        for f in figures:
            d = f.as_dict()
            d.pop("file", None)  # a temporary file: the command writes it where the user wants it (see write)
            forms.append(d)
        fit = None
        if max_latency_ms is not None:
            timed = next((f for f in figures if f.form == latency_form and f.latency_ms), None)
            fit = timed is not None and timed.latency_ms["p50"] <= max_latency_ms
            if fit:
                fits_found = True
            else:
                over.append(row["trial_id"])
        trials.append({"trial_id": row["trial_id"], "rank": rank, "model_name": row.get("model_name"),
                       "sweep_" + primary: row[primary], "checkpoint": ck, "forms": forms,
                       **({"fits_max_latency": fit} if fit is not None else {})})
        last_cost = time.perf_counter() - t_trial
    if not trials:
        return None
    out = {
        "primary_metric": primary, "images": len(pairs), "unreadable_images": unreadable,
        "calibration_images": len(calibration), "tolerance": TOLERANCE, "machine": _machine(),
        "latency": "p50 and p99 of one image at batch 1 (ms); throughput: the best images/s over batches 1, 8, 32",
        **({"max_latency_ms": max_latency_ms, "latency_form": latency_form, "over_max_latency": over}
           if max_latency_ms is not None else {}),
        "trials": trials, "front": front(trials),
        **({"not_measured": skipped} if skipped else {}),
        **({"budget_s": round(budget_s, 1)} if budget_s is not None else {}),
    }
    return out


def write(store: RunStore, figures: dict[str, Any], best_trial: str | None) -> None:
    """``RUN/deployment.json``, each form with the command that gives it: the best trial's from ``RUN/best``, the
    others' from their checkpoint in the run folder (a model package too)."""
    for t in figures["trials"]:
        package = f"{store.where}/best" if t["trial_id"] == best_trial else f"{store.where}/{t['checkpoint']}"
        t["best"] = t["trial_id"] == best_trial
        for f in t["forms"]:
            f["command"] = _command(f["form"], package)
    (store.local / FILE).write_text(json.dumps(figures, indent=2) + "\n")


def mark_rows(rows: list[dict[str, Any]], figures: dict[str, Any]) -> set[str]:
    """Leaderboard rows get their measured ``latency_ms`` (p50 at batch 1 of ``latency_form``, default ONNX) and,
    over ``max_latency_ms``, a ``latency_note``; returns the trials over the limit (never the best model)."""
    form = figures.get("latency_form", "onnx")
    by_trial = {t["trial_id"]: t for t in figures["trials"]}
    over = set(figures.get("over_max_latency", []))
    for r in rows:
        t = by_trial.get(r["trial_id"])
        if t is None:
            continue
        timed = next((f for f in t["forms"] if f["form"] == form and f.get("latency_ms")), None)
        r["latency_ms"] = timed["latency_ms"]["p50"] if timed else None
        if r["trial_id"] in over:
            r["latency_note"] = (f"over max_latency_ms {figures['max_latency_ms']:g}: not chosen as best" if timed else
                                 f"{form} latency not measured ({_error(t, form)}): not chosen as best")
    return over


def _error(trial: dict[str, Any], form: str) -> str:
    return next((f.get("error", "") for f in trial["forms"] if f["form"] == form), "")[:120]


def front(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accuracy-latency front: the (trial, form) pairs no other pair beats on both the metric (higher) and the
    p50 latency (lower); flagged and failed forms are not candidates."""
    points = [(t["trial_id"], f["form"], f["metric"], f["latency_ms"]["p50"]) for t in trials for f in t["forms"]
              if f.get("metric") is not None and f.get("latency_ms") and not f.get("flagged")]
    keep = [p for p in points if not any(q[2] >= p[2] and q[3] <= p[3] and (q[2] > p[2] or q[3] < p[3])
                                         for q in points)]
    return [{"trial_id": t, "form": f, "metric": m, "p50_ms": ms} for t, f, m, ms in sorted(keep, key=lambda p: p[3])]


def _command(form: str, package: str) -> str:
    return {"pytorch": f"visionsweep serve {package}", "onnx": f"visionsweep export {package}",
            "onnx-int8": f"visionsweep export {package} --int8"}.get(form, "")


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": "cpu", "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def section(run: Path) -> str:
    """The report's "What to deploy": per trial and form, the metric against latency, what each export loses, the
    front marked, and the command that gives each form (from ``RUN/deployment.json``)."""
    import html

    path = Path(run) / FILE
    if not path.is_file():
        return ('<p class="note" id="deployment">Not measured: the run has no deployment.json '
                f"(visionsweep.deploy_top_k: 0, or ${OFF_ENV}=0, or no validation images).</p>")
    d = json.loads(path.read_text())
    primary, m = d["primary_metric"], d.get("machine", {})
    on_front = {(p["trial_id"], p["form"]) for p in d.get("front", [])}
    rows = []
    for t in d["trials"]:
        for f in t["forms"]:
            lat, thr = f.get("latency_ms") or {}, f.get("throughput") or {}
            state = f.get("error") or f.get("flagged") or ""
            cells = [f"{t['rank']}. {t['trial_id']}" + (" (best)" if t.get("best") else ""),
                     t.get("model_name") or "", f["form"] + (" ★" if (t["trial_id"], f["form"]) in on_front else ""),
                     _num(f.get("metric"), ".4f"), _num(f.get("loss"), "+.4f"), _num(lat.get("p50"), ".2f"),
                     _num(lat.get("p99"), ".2f"), f"{thr['images_per_s']:.0f} (batch {thr['batch']})" if thr else "",
                     _num(f.get("size_mb"), ".1f"), state, f.get("command", "")]
            cls = ' class="flagged"' if f.get("flagged") or f.get("error") else ""
            rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = ["trial", "model", "form", primary, "lost vs PyTorch", "p50 ms", "p99 ms", "images/s", "MB",
            "flag", "command"]
    limit = (f" Trials over max_latency_ms {d['max_latency_ms']:g} ({d['latency_form']}, p50): "
             f"{', '.join(d['over_max_latency']) or 'none'}; they are never chosen as the best model."
             if "max_latency_ms" in d else "")
    tol = ", ".join(f"{k} {v}" for k, v in d.get("tolerance", {}).items())
    left = d.get("not_measured", [])
    if left:
        limit += (f" Not measured: {', '.join(str(t['rank']) + '. ' + t['trial_id'] for t in left)}; "
                  f"{left[0]['why']}.")
    return (f'<div id="deployment"><p>Each form scored on {d["images"]} validation images with the task\'s metric; '
            f"latency of one image at batch 1 on {html.escape(str(m.get('cpu', 'this CPU')))} "
            f"({m.get('torch_threads', '?')} threads), onnxruntime {html.escape(str(m.get('onnxruntime', '')))}. "
            f"★: on the accuracy-latency front. A form that loses more than its tolerance ({html.escape(tol)}) is "
            f"flagged: not fit to ship.{html.escape(limit)}</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table></div>")


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)

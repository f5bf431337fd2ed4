"""What each deployable form of a model package does on this machine: its metric on labelled images (the task's own
evaluation, ``Task.score``) and its latency and throughput. The forms are the package's PyTorch model, its ONNX export
(``trainers.package.onnx``) and its INT8 ONNX export (``trainers.package.int8``), run by onnxruntime.

Hand-written because no library measures a visionsweep package's exports against the package on the task's metric;
the exports, the runtime and the metrics are the libraries' (torch.onnx, onnxruntime, the task's metrics).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trainers.errors import VisionsweepError

FORMS = ("pytorch", "onnx", "onnx-int8")
#: how far below the package's metric a form may score before it is flagged as not fit to ship: fp32 ONNX should
#: agree to float rounding; INT8 is allowed what a careful static quantisation loses on a classifier
TOLERANCE = {"onnx": 0.005, "onnx-int8": 0.03}
#: batch sizes tried for throughput (those with enough images)
THROUGHPUT_BATCHES = (1, 8, 32)


@dataclass
class FormFigures:
    """One form of one package: ``metric`` (the primary metric) and the other ``metrics``, ``latency_ms`` (p50 and
    p99 of one image at batch 1), ``throughput`` (images/s at the best batch), the exported ``file`` and its size;
    ``error``: why it was not measured; ``flagged``: why it must not be shipped (it scores below the package by more
    than the stated tolerance)."""

    form: str
    metric: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    throughput: dict[str, float] | None = None
    file: str | None = None
    size_mb: float | None = None
    loss: float | None = None  # the package's metric minus this form's
    tolerance: float | None = None
    flagged: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def measure_package(package: str | Path, images: Sequence[tuple[Any, Any]], primary: str, workdir: str | Path,
                    forms: Sequence[str] = FORMS, calibration: Sequence[str] = (), latency_runs: int = 20,
                    budget_s: float = 2.0, echo: Callable[[str], None] | None = None) -> list[FormFigures]:
    """Measure ``forms`` of ``package`` on labelled ``images`` ((PIL image, record) pairs, read as the trials read
    them) with the task's metric ``primary``; exports are written under ``workdir``. A form that cannot be exported
    or run gets its ``error``; the others are still measured. ``calibration``: training images (paths or URLs) the
    INT8 form is calibrated on. Latency: ``latency_runs`` calls at batch 1 after a warm-up, at most ``budget_s``
    seconds per form and batch size."""
    from trainers.package import load_package
    from trainers.tasks import make_task
    from trainers.workers import Runtime

    if not images:
        raise VisionsweepError(f"{package}: no labelled images to measure its forms on")
    pkg = load_package(str(package), "cpu")
    task = make_task(pkg.task, pkg.classes)
    # the exports bake the task's scoring settings in (a detector's score threshold); a classifier has none, and its
    # exports trace the package loaded here instead of building and reading it twice more
    scoring = task.scoring_settings(pkg.settings)
    exportable = load_package(str(package), "cpu", scoring) if scoring else pkg
    h = {**pkg.training_config, **pkg.settings, "log_validation_loss": False}
    h.setdefault("validation_metric_type", "voc")
    h.setdefault("validation_iou_threshold", 0.5)
    sample = task.labelled_sample(pkg.settings)
    items = [sample(image, record, 0) for image, record in images]
    collate = task.collate or torch.utils.data.default_collate
    batches = [collate(items[i:i + 8]) for i in range(0, len(items), 8)]
    # a detector's graph takes one fixed input size: the validation images' median, so that few are distorted
    sizes = sorted(image.size for image, _ in images)
    width, height = sizes[len(sizes) // 2]
    options = {"image_size": f"{height}x{width}"}
    out, reference = [], None
    for form in forms:
        fig = FormFigures(form)
        try:
            model = (pkg.model if form == "pytorch" else
                     _exported(form, str(package), task, exportable, workdir, fig, calibration, options))
            with torch.no_grad():
                fig.metrics = _plain(task.score(model, batches, Runtime(torch.device("cpu")), h))
                fig.metric = fig.metrics.get(primary)
                fig.latency_ms, fig.throughput = _speed(model, items, collate, latency_runs, budget_s)
        except VisionsweepError as e:
            fig.error = str(e)
        except Exception as e:  # noqa: BLE001 - a form that fails is a finding, not the end of the others
            import logging

            logging.getLogger(__name__).debug("form %s of %s", form, package, exc_info=True)
            fig.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if form == "pytorch":
            reference = fig.metric
        elif fig.metric is not None and reference is not None:
            fig.loss, fig.tolerance = round(reference - fig.metric, 6), TOLERANCE.get(form)
            if fig.tolerance is not None and fig.loss > fig.tolerance:
                fig.flagged = (f"{primary} {fig.metric:.4f} is {fig.loss:.4f} below the package's {reference:.4f} "
                               f"(tolerance {fig.tolerance}): not fit to ship")
        if echo:
            echo(f"  {form}: " + (fig.error or f"{primary} {fig.metric}, p50 {fig.latency_ms['p50']:.1f} ms"))
        out.append(fig)
    return out


def _exported(form: str, package: str, task, pkg, workdir: str | Path, fig: FormFigures, calibration: Sequence[str],
              options: dict[str, Any]):
    """The form's graph, exported under ``workdir``, as a module called like the package's model. The INT8 form is
    kept whatever it agrees, and without the export's own check: it is scored on all of ``images`` here."""
    import onnxruntime as ort

    why_not = task.unmeasurable(pkg.model_name)
    if why_not:
        raise VisionsweepError(why_not)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = task.scoring_settings(pkg.settings)  # ``pkg`` is loaded with them
    if form == "onnx":
        from trainers.package.onnx import export_onnx

        path = export_onnx(package, workdir / "model.onnx", check=False, settings=settings or None, loaded=pkg,
                           **options).path
    elif form == "onnx-int8":
        from trainers.package.int8 import export_int8

        if not calibration:
            raise VisionsweepError(f"{package}: no training images to calibrate the INT8 form on")
        # quantised from the ONNX form's graph (same settings)
        path = export_int8(package, workdir / "model.int8.onnx", fp32_output=workdir / "model.onnx", reuse_fp32=True,
                           calibration_images=list(calibration), check=False, keep_below_tolerance=True,
                           settings=settings or None, loaded=pkg, **options).path
    else:
        raise VisionsweepError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    fig.file, fig.size_mb = str(path), round(Path(path).stat().st_size / 2**20, 2)
    import json

    meta = json.loads(Path(str(path) + ".json").read_text())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return task.onnx_model(session, meta, package)


def _speed(model, items, collate, runs: int, budget_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """p50/p99 milliseconds of one image at batch 1; the best images/s over the batch sizes there are images for."""
    if hasattr(model, "eval"):
        model.eval()
    one = collate(items[:1])[0]
    times = _timed(model, one, runs, budget_s)
    latency = {"p50": round(statistics.median(times) * 1e3, 3),
               "p99": round(sorted(times)[min(len(times) - 1, int(0.99 * len(times)))] * 1e3, 3),
               "runs": len(times)}
    best = {"images_per_s": round(1 / statistics.median(times), 2), "batch": 1}
    for bs in THROUGHPUT_BATCHES[1:]:
        if len(items) < bs:
            break
        batch = collate(items[:bs])[0]
        rate = bs / statistics.median(_timed(model, batch, max(3, runs // bs), budget_s))
        if rate > best["images_per_s"]:
            best = {"images_per_s": round(rate, 2), "batch": bs}
    return latency, best


def _timed(model, x, runs: int, budget_s: float) -> list[float]:
    with torch.no_grad():
        model(x)  # warm-up: the first call allocates
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return times


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics (JSON-ready): per-label tables and curves are the report's, not deployment's."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

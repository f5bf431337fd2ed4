"""A model package -> an ONNX model with the managed service's conventions (SPEC §15), checked with onnxruntime.

Conventions (what a client of the service's ONNX models expects):

* classification: input ``input1`` (B, 3, crop, crop) -> ``output1`` logits (B, num_classes). B is a
  dynamic axis. Without ``enable_onnx_normalization`` the input is the normalised tensor (resize, center
  crop, ``(x - mean) / std``); with it, normalisation is inside the graph and the input is RGB in [0, 1].
* YOLOv5: input ``input`` (B, 3, S, S), S = ``image_size``, letterboxed RGB in [0, 1] -> per image ``output_i``
  (n, 6): ``x0, y0, x1, y1, conf, class_id`` after NMS (the service's YOLO convention).
* Faster R-CNN / RetinaNet / Mask R-CNN: input ``input`` (B, 3, H, W), RGB in [0, 1] (default 600 x 800;
  torchvision's detectors resize to ``min_size``/``max_size`` and normalise inside the graph, so
  ``enable_onnx_normalization`` changes nothing for them) -> per image ``i``: ``boxes_i`` (n, 4, x0 y0 x1 y1
  in input pixels), ``labels_i`` (n, an index into the labels list) and ``scores_i`` (n), best first, above
  the package's ``box_score_threshold``; Mask R-CNN adds ``masks_i`` (n, 1, H, W, per-pixel probabilities).

Beside ``MODEL.onnx`` a ``MODEL.onnx.json`` holds what a client needs to use it: the labels, the
input's pre-processing and the outputs. Detectors are traced with PyTorch's TorchScript exporter (its
dynamo exporter cannot yet trace torchvision's detection transforms); classifiers with either.

Hand-written because no library turns a visionsweep package (its task, labels and settings) into a
graph with these names; the graph itself is ``torch.onnx``'s. Each task builds its own (``Task.onnx_graph``, with the
wrappers of ``trainers.tasks.graphs``); this module traces it, writes the sidecar and checks the result.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers import hyperparameters as hp
from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.progress import phase
from trainers.tasks import make_task

# the graphs are the task's (trainers.tasks.graphs); these names stay importable from here
from trainers.tasks.graphs import DETECTION_INPUT  # noqa: F401
from trainers.tasks.graphs import YoloGraph as _YoloGraph  # noqa: F401

log = logging.getLogger(__name__)

OPSET = 17


@dataclass
class Exported:
    path: Path
    metadata: dict[str, Any]
    max_abs_diff: float | None = None  # onnxruntime vs the PyTorch package on the check inputs


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise VisionsweepError(f"--image-size: expected HEIGHTxWIDTH such as 600x800, but got {text!r}")


def export_onnx(package: str, output: str | Path | None = None, *, batch_size: int = 1,
                normalization: bool | None = None, image_size: str | None = None, check: bool = True,
                check_images: list[torch.Tensor] | None = None, settings: dict[str, Any] | None = None,
                loaded: Any = None) -> Exported:
    """Write ``output`` (default ``PACKAGE/model.onnx``) and its ``.json`` sidecar; with ``check``, run it
    under onnxruntime beside the PyTorch package on the same inputs and record the largest difference.
    ``settings`` override the package's inference settings (§9.5) that the graph bakes in, such as
    ``box_score_threshold`` or ``box_detections_per_image``. ``loaded``: the package already loaded with those
    settings (``load_package``), when the caller holds it: not built and read again."""
    from trainers.package import load_package

    if batch_size < 1:
        raise VisionsweepError(f"--batch-size: expected a positive integer, but got {batch_size}")
    size = _parse_size(image_size)
    if loaded is not None:
        pkg = loaded
    else:
        with phase("loading the model package"):
            pkg = load_package(package, "cpu", settings)
    task, name = pkg.task, pkg.model_name
    out = Path(output) if output else Path(str(package).removeprefix("file://")) / "model.onnx"
    if is_url(str(out)):
        raise VisionsweepError(f"--output: a local file path is expected, but got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if normalization is None:  # §14: the trial's enable_onnx_normalization
        normalization = hp.as_bool(pkg.training_config.get("enable_onnx_normalization", False))
    graph = make_task(task, pkg.classes).onnx_graph(pkg, batch_size, size, normalization, str(package))
    module, example = graph.module, graph.example
    module.eval()
    try:  # tracing a detector takes a minute or more: the phase lines say it is alive
        with phase(f"tracing {name} and writing {out.name}"), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes in torchvision
            torch.onnx.export(module, (example,), str(out), input_names=graph.inputs, output_names=graph.outputs,
                              dynamic_axes=graph.dynamic, opset_version=OPSET, dynamo=False)
    except Exception as e:  # noqa: BLE001 - any tracer/exporter failure is "cannot be exported", with why
        raise VisionsweepError(f"{package}: {name} could not be exported to ONNX ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    meta = {"task": task, "model_name": name, "labels": list(pkg.classes), "opset": OPSET,
            "batch_size": batch_size, "input": graph.meta_input, "outputs": graph.meta_outputs,
            "inference_settings": pkg.settings, "source_package": str(package)}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    result = Exported(out, meta)
    if check:
        with phase(f"checking {out.name} with onnxruntime"):
            result.max_abs_diff = _check(module, out, check_images or [example], graph.rows)
    return result


def _check(module: nn.Module, path: Path, batches: list[torch.Tensor], rows: bool) -> float:
    """The largest absolute difference between onnxruntime and PyTorch on the same inputs. Classifier
    logits are compared element by element; detections (``boxes_i``, YOLO's (n, 6) rows) row by row, each
    exported row against its nearest PyTorch row (near-equal scores may come out in another order), and the
    numbers of detections must agree within 5 % (or 2)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise VisionsweepError("checking the export needs onnxruntime: pip install 'visionsweep[onnx]' "
                               "(or pass --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    for x in batches:
        got = sess.run(None, {name: x.numpy()})
        with torch.no_grad():
            ref = module(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        if len(got) != len(ref):
            raise VisionsweepError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}")
        for g, r in zip(got, ref):
            g, r = torch.from_numpy(g).float(), r.float()
            if not rows:
                worst = max(worst, float((g - r).abs().max()))
            elif abs(len(g) - len(r)) > max(2, 0.05 * max(len(g), len(r))):
                # a box whose score or overlap sits on a threshold may fall either side in float32
                raise VisionsweepError(f"{path}: onnxruntime found {len(g)} detections where PyTorch found {len(r)}")
            elif g.dim() == 2 and g.shape[1] >= 4 and len(g) and len(r):
                small, large = (g, r) if len(g) <= len(r) else (r, g)
                worst = max(worst, float(torch.cdist(small, large, p=float("inf")).min(1).values.max()))
    return worst

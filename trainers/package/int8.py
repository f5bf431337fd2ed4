"""A model package -> an INT8 ONNX model (static quantisation by onnxruntime), checked against the package.

Why: an INT8 graph runs faster on CPUs and is a quarter of the size, but only where quantisation keeps the
predictions; so the result is always measured against the PyTorch package before it is accepted.

How: the fp32 graph is the one ``trainers.package.onnx.export_onnx`` writes (same input/output names, same
pre-processing contract); ``onnxruntime.quantization.quantize_static`` turns it into a QDQ graph (weights int8 per
output channel, activations uint8), with activation ranges calibrated (min/max) on real images pre-processed
exactly as the graph's input contract says. Calibration images are the caller's ``calibration_images`` where given,
else the training images of the run the package came from (``RUN/data/train.jsonl`` beside ``RUN/best`` or
``RUN/outputs/mlflow-model``). The check compares top-1 predictions of the INT8 graph with the package's on the
caller's ``check_images`` where given, else the run's held-out images (``RUN/data/valid.jsonl``), else the
calibration images; agreement under ``min_agreement`` is an error unless ``keep_below_tolerance``.

Beside ``MODEL.int8.onnx`` a ``MODEL.int8.onnx.json`` holds the fp32 sidecar's fields plus ``quantization``: the
method, the calibration source and count, the check's agreement, and the operators the quantised graph still runs in
float (nodes none of whose inputs come from a DequantizeLinear).

Detectors (Faster R-CNN, RetinaNet, Mask R-CNN, YOLOv5) are tried the same way; their check compares each image's
best detection (same label, IoU >= 0.5). Where onnxruntime cannot quantise the graph, or the agreement is too low,
the error names the reason and points to the fp32 export.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.package.onnx import Exported, export_onnx
from trainers.progress import phase
from trainers.tasks import make_task
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.95  # top-1 agreement with the package below which an INT8 export is refused
CALIBRATION_COUNT = 100  # onnxruntime's guidance: a few hundred representative inputs at most
CHECK_COUNT = 200
QDQ = {"QuantizeLinear", "DequantizeLinear"}
#: the operators of a detector's graph that are quantised (None: every operator onnxruntime can): its convolutions.
#: The box decoding and score arithmetic after them (multiplies, adds, sigmoids in pixel units) lose whole pixels in
#: 8 bits: on the demo's YOLOv5 quantising every operator lost 0.044 mAP@0.5, the convolutions alone 0.012
#: (bench/deployment_forms.py, bench/RESULTS.md, issue 28)
DETECTOR_OPERATORS: tuple[str, ...] | None = ("Conv",)


@dataclass
class Int8Exported:
    path: Path  # the INT8 model
    metadata: dict[str, Any]  # what its .json sidecar holds
    fp32: Exported  # the fp32 export it was quantised from
    agreement: float | None  # share of the check images whose top-1 prediction equals the package's (None: unchecked)
    checked_images: int
    operators_in_fp32: dict[str, int] = field(default_factory=dict)


def export_int8(package: str, output: str | Path | None = None, *, calibration_images: list[str | Path] | None = None,
                calibration_count: int = CALIBRATION_COUNT, check_images: list[str | Path] | None = None,
                check_count: int = CHECK_COUNT, min_agreement: float = MIN_AGREEMENT,
                keep_below_tolerance: bool = False, per_channel: bool = True, fp32_output: str | Path | None = None,
                batch_size: int = 1, normalization: bool | None = None, image_size: str | None = None,
                settings: dict[str, Any] | None = None, reuse_fp32: bool = False, loaded: Any = None,
                check: bool = True) -> Int8Exported:
    """Write ``output`` (default ``PACKAGE/model.int8.onnx``) and its ``.json`` sidecar, and the fp32 model it is
    quantised from (``fp32_output``, default ``model.onnx`` beside it). ``batch_size``, ``normalization``,
    ``image_size`` and ``settings`` are ``export_onnx``'s. Raises ``VisionsweepError`` where the graph cannot be
    quantised or its top-1 agreement with the package is under ``min_agreement`` (unless ``keep_below_tolerance``).
    ``reuse_fp32``: an fp32 export already at ``fp32_output`` (with its sidecar, made with the same options) is
    quantised as it is instead of being exported again. ``loaded``: the package already loaded with ``settings``
    (``load_package``), when the caller holds it. ``check``: False for a caller that scores the INT8 model on its
    own images (the deployment figures): no agreement is measured (``agreement`` None) and nothing is refused."""
    from trainers.package import load_package

    if calibration_count < 1 or check_count < 1:
        raise VisionsweepError(f"calibration_count and check_count: expected positive integers, but got "
                               f"{calibration_count} and {check_count}")
    if not 0.0 <= min_agreement <= 1.0:
        raise VisionsweepError(f"min_agreement: expected a share between 0 and 1, but got {min_agreement}")
    try:
        from onnxruntime.quantization import CalibrationDataReader  # noqa: F401
    except ImportError:
        raise VisionsweepError("an INT8 export needs onnxruntime: pip install 'visionsweep[onnx]'") from None
    out = Path(output) if output else Path(str(package).removeprefix("file://")) / "model.int8.onnx"
    fp32_path = Path(fp32_output) if fp32_output else out.with_name(
        out.name.removesuffix(".int8.onnx") + ".onnx" if out.name.endswith(".int8.onnx") else out.stem + ".fp32.onnx")
    if is_url(str(out)) or is_url(str(fp32_path)):
        raise VisionsweepError(f"--output: a local file path is expected, but got {out}")
    if fp32_path.resolve() == out.resolve():
        raise VisionsweepError(f"--output: {out} would overwrite the fp32 model it is quantised from")
    where = str(package)
    # its classes say whether a run's data is its own
    pkg = loaded if loaded is not None else load_package(package, "cpu", settings)
    run_data = _run_data(Path(str(package).removeprefix("file://")), pkg.classes)
    if calibration_images:
        calib_paths, calib_source = [str(p) for p in calibration_images], "images given by the caller"
    elif run_data is not None:
        calib_paths, calib_source = image_urls(run_data / "train.jsonl"), f"the package's training data ({run_data}/" \
                                                                      "train.jsonl)"
    else:
        raise VisionsweepError(f"{where}: an INT8 export needs calibration images: the package records no training "
                               "data (no RUN/data/train.jsonl of the run it came from), so pass calibration_images "
                               "(image files pre-processed like the package's input)")
    calib_paths = seeded_sample(calib_paths, calibration_count)
    if check_images:
        check_paths, check_source = [str(p) for p in check_images], "images given by the caller"
    elif run_data is not None and (run_data / "valid.jsonl").is_file():
        check_paths, check_source = image_urls(run_data / "valid.jsonl"), f"the run's held-out validation images " \
                                                                      f"({run_data}/valid.jsonl)"
    else:
        check_paths, check_source = calib_paths, "the calibration images (no held-out images recorded or given)"
    check_paths = seeded_sample(check_paths, check_count)

    if reuse_fp32 and fp32_path.is_file() and Path(str(fp32_path) + ".json").is_file():
        # the caller exported it already with these options (deployment figures): not traced twice
        fp32 = Exported(fp32_path, json.loads(Path(str(fp32_path) + ".json").read_text()))
    else:
        fp32 = export_onnx(package, fp32_path, batch_size=batch_size, normalization=normalization,
                           image_size=image_size, settings=settings, loaded=pkg)
    meta = fp32.metadata
    rows = make_task(pkg.task, pkg.classes).input_transform(pkg.settings, where) is None  # a detector's graph
    prep = _preprocess(pkg, meta["input"], where)
    batch = meta["batch_size"] if rows else 1  # detector graphs have a fixed batch; classifiers a dynamic one
    calib = _batches([prep(p) for p in calib_paths], batch, where)
    with phase(f"quantising {fp32_path.name} to INT8 on {len(calib_paths)} calibration images"):
        _quantize(fp32_path, out, calib, per_channel, rows, meta["model_name"], where)
    ops_fp32, ops_int8 = _operators(out)
    if not check:
        meta_int8 = {**meta, "quantization": _quantization(per_channel, calib_source, calib_paths, ops_fp32, ops_int8,
                                                           fp32_path)}
        Path(str(out) + ".json").write_text(json.dumps(meta_int8, indent=2, sort_keys=True, default=str) + "\n")
        return Int8Exported(out, meta_int8, fp32, None, 0, ops_fp32)
    with phase(f"checking {out.name} against the package on {len(check_paths)} images"):
        checks = _batches([prep(p) for p in check_paths], batch, where)
        agreement, found = _agreement(out, pkg, checks, meta["input"], rows)
    quant = {**_quantization(per_channel, calib_source, calib_paths, ops_fp32, ops_int8, fp32_path),
             "check_source": check_source, "check_count": len(check_paths),
             "top1_agreement_with_package": round(agreement, 4), "min_agreement": min_agreement,
             "check_images_with_predictions": found}
    meta_int8 = {**meta, "quantization": quant}
    Path(str(out) + ".json").write_text(json.dumps(meta_int8, indent=2, sort_keys=True, default=str) + "\n")
    if rows and not found and not keep_below_tolerance:
        raise VisionsweepError(
            f"{where}: the INT8 model of {meta['model_name']} cannot be checked: the package finds no detection on "
            f"any of the {len(check_paths)} check images ({check_source}) at box_score_threshold "
            f"{pkg.settings.get('box_score_threshold')}; check it on images with objects (check_images), or use the "
            f"fp32 export ({fp32_path}); {out} is written")
    if agreement < min_agreement and not keep_below_tolerance:
        what = "best detection" if rows else "top-1 prediction"
        left = ", ".join(f"{k} x{v}" for k, v in sorted(ops_fp32.items())) or "none"
        raise VisionsweepError(
            f"{where}: the INT8 model of {meta['model_name']} agrees with the package's {what} on only "
            f"{agreement:.1%} of {len(check_paths)} images ({check_source}), under the tolerance "
            f"{min_agreement:.0%}; operators left in fp32: {left}. Use the fp32 export ({fp32_path}), or keep "
            f"this model anyway (keep_below_tolerance; --int8-keep on the command line); {out} is written")
    return Int8Exported(out, meta_int8, fp32, agreement, len(check_paths), ops_fp32)


def _quantization(per_channel: bool, calib_source: str, calib_paths: list, ops_fp32: dict[str, int],
                  ops_int8: dict[str, int], fp32_path: Path) -> dict[str, Any]:
    """The sidecar's ``quantization``: how the model was quantised (the check's figures are added to it)."""
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8, " + ("per output channel" if per_channel else "per tensor"),
            "activations": "uint8, per tensor", "calibration_method": "MinMax",
            "calibration_source": calib_source, "calibration_count": len(calib_paths),
            "operators_in_fp32": ops_fp32, "quantized_operators": ops_int8, "fp32_model": str(fp32_path)}


# --- images -----------------------------------------------------------------------------------------------------
def _run_data(folder: Path, classes: list[str]) -> Path | None:
    """``RUN/data`` of the run a local package came from (``RUN/best``, ``RUN/outputs/mlflow-model``,
    ``RUN/trials/T/...``), where its classes are the package's; None otherwise."""
    for d in [folder, *list(folder.resolve().parents)[:4]]:
        data = d / "data"
        if (data / "train.jsonl").is_file() and (data / "summary.json").is_file():
            try:
                if json.loads((data / "summary.json").read_text()).get("classes") == list(classes):
                    return data
            except (OSError, json.JSONDecodeError):
                continue
    return None


def image_urls(jsonl: Path) -> list[str]:
    urls = []
    for n, line in enumerate(jsonl.read_text().splitlines(), 1):
        if line.strip():
            try:
                urls.append(json.loads(line)["image_url"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise VisionsweepError(f"{jsonl}:{n}: expected a JSON object with an 'image_url'") from None
    return urls


def seeded_sample(paths: list, n: int) -> list:
    """``n`` of ``paths``, a seeded random choice (training data is often sorted by class), in their order."""
    if len(paths) <= n:
        return list(paths)
    keep = sorted(random.Random(0).sample(range(len(paths)), n))
    return [paths[i] for i in keep]


def _preprocess(pkg, meta_input: dict[str, Any], where: str):
    """One image file -> the graph's input tensor (3, H, W), as the sidecar's ``input`` says: a classifier's
    resize, center crop and (unless it is in the graph) normalisation; a detector's resize to the fixed input (YOLOv5's
    letterbox), RGB in [0, 1]."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from trainers.data.images import read_image
    from trainers.models.openmmlab import YOLO_PAD

    transform = make_task(pkg.task, pkg.classes).input_transform(pkg.settings, where)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    _, _, h, w = meta_input["shape"]

    def prep(path: str) -> torch.Tensor:
        image = read_image(str(path))
        if transform is None and meta_input.get("letterbox"):  # YOLOv5: calibrated on what it is given
            s = int(w) / max(image.size)
            size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
            square = Image.new("RGB", (int(w), int(h)), (int(YOLO_PAD),) * 3)
            square.paste(image.convert("RGB").resize(size), (0, 0))
            return pil_to_tensor(square).float() / 255
        if transform is None:  # a detector: the whole image, resized to the graph's fixed input
            return pil_to_tensor(image.convert("RGB").resize((int(w), int(h)))).float() / 255
        x = transform(image)  # the package's own transform: normalised
        return x * std + mean if meta_input.get("normalization_in_graph") else x

    return prep


def _batches(tensors: list[torch.Tensor], batch: int, where: str) -> list[np.ndarray]:
    if len(tensors) < batch:
        raise VisionsweepError(f"{where}: {len(tensors)} images, fewer than the graph's batch size {batch}")
    return [torch.stack(tensors[i:i + batch]).numpy() for i in range(0, len(tensors) - batch + 1, batch)]


# --- quantisation -----------------------------------------------------------------------------------------------
def _quantize(src: Path, dst: Path, batches: list[np.ndarray], per_channel: bool, rows: bool, name: str,
              where: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it: Iterator[np.ndarray] = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {input_name: x}

        def rewind(self):
            self.it = iter(batches)

    with tempfile.TemporaryDirectory(prefix="visionsweep-int8-") as tmp, _quiet_onnxruntime():
        pre = Path(tmp) / "pre.onnx"
        if not rows:
            # a classifier's graph as exported (eval mode) has its BatchNorms folded into the Convs already, which is
            # what onnxruntime's recommended pre-processing is for; it gave the same graph's agreement to the image
            # on ResNet-18 and MobileNetV2, and cost ResNet-18 2 s of a 4-s export (bench/RESULTS.md, issue 28)
            pre = src
        else:
            try:  # onnxruntime's recommended pre-processing: shape inference and graph optimisation
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            except Exception as e:  # noqa: BLE001 - optional: quantisation works on the plain graph too
                log.info("INT8 pre-processing of %s skipped (%s)", src, str(e).splitlines()[0][:200] if str(e) else e)
                pre = src
        ops = {"op_types_to_quantize": list(DETECTOR_OPERATORS)} if rows and DETECTOR_OPERATORS else {}
        try:
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"CalibTensorRangeSymmetric": False}, **ops)
        except Exception as e:  # noqa: BLE001 - whatever onnxruntime says is the reason it cannot be quantised
            raise VisionsweepError(
                f"{where}: onnxruntime cannot quantise the ONNX graph of {name} to INT8 ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}); use the fp32 export ({src})") from None
    # the quantiser leaves the exporter's Constant nodes whose outputs nothing reads any more (70 in MobileNetV2):
    # every session that loads the model would warn once for each (a serving replica at each start)
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(dst))
    ONNXModel(model).remove_unused_constant()
    onnx.save(model, str(dst))


@contextmanager
def _quiet_onnxruntime():
    """Calibration runs the graph with every tensor as an output: onnxruntime warns for each shape that differs from
    the traced one (a detector's per-image detections), thousands of lines that say nothing wrong; and its advice
    to pre-process goes too (a classifier's graph is quantised as exported, on purpose)."""
    import onnxruntime as ort

    root = logging.getLogger()
    ort.set_default_logger_severity(3)
    root.addFilter(_no_preprocessing_advice)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantiser advises pre-processing on the root logger; a classifier's graph is left without it
    on purpose (``_quantize``)."""
    return "pre-processing" not in record.getMessage()


def _operators(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(operators left in fp32, operators quantised) by type: a node is quantised where one of its inputs comes
    from a DequantizeLinear (QDQ) or it is a QLinear*/integer operator; Q/DQ nodes and constants are left out."""
    import onnx

    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fp32, int8 = Counter(), Counter()
    for n in graph.node:
        if n.op_type in QDQ or n.op_type == "Constant":
            continue
        integer = n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")
        (int8 if integer or any(i in dq_outputs for i in n.input) else fp32)[n.op_type] += 1
    return dict(sorted(fp32.items())), dict(sorted(int8.items()))


# --- the check --------------------------------------------------------------------------------------------------
def _agreement(path: Path, pkg, batches: list[np.ndarray], meta_input: dict[str, Any],
               rows: bool) -> tuple[float, int]:
    """(share of images where the INT8 graph's top-1 prediction equals the package's (PyTorch) on the same input,
    number of images where the package predicts something: all of them for a classifier, those with a detection
    for a detector)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # a detector's shapes differ from the traced ones: warnings, not errors
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    same = total = found = 0
    for x in batches:
        got = sess.run(None, {name: x})
        t = torch.from_numpy(x)
        with torch.no_grad():
            if not rows:
                ref = pkg.model((t - mean) / std if meta_input.get("normalization_in_graph") else t)
                same += int((torch.from_numpy(got[0]).argmax(1) == ref.argmax(1)).sum())
                total += len(x)
                found += len(x)
                continue
            ref = _package_detections(pkg, t)
        per_image = len(got) // len(x)
        for i, r in enumerate(ref):
            same += _same_best(_graph_detections(got[i * per_image:(i + 1) * per_image]), r)
            total += 1
            found += int(len(r[0]) > 0)
    return same / max(1, total), found


def _package_detections(pkg, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(boxes, 0-based labels, scores) per image, from the package's own predictor path."""
    from trainers.workers import Runtime

    outs = make_task(pkg.task, pkg.classes).predict(pkg.model, list(x), pkg.settings, Runtime(torch.device("cpu")))
    return [(o["boxes"].numpy(), o["labels"].numpy() - 1, o["scores"].numpy()) for o in outs]


def _graph_detections(outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(outs) == 1:  # YOLOv5: (n, 6) x0 y0 x1 y1 conf class
        o = outs[0]
        return o[:, :4], o[:, 5].astype(np.int64), o[:, 4]
    return outs[0], outs[1], outs[2]  # boxes, labels, scores (masks follow)


def _same_best(got, ref) -> int:
    """1 where the package's best detection has an INT8 detection of its label at IoU >= 0.5, or neither found any."""
    (gb, gl, _), (rb, rl, rs) = got, ref
    if len(rb) == 0 or len(gb) == 0:
        return int(len(rb) == len(gb) == 0)
    best = int(np.argmax(rs))
    cand = gb[gl == rl[best]]
    if len(cand) == 0:
        return 0
    b = rb[best]
    x0, y0 = np.maximum(cand[:, 0], b[0]), np.maximum(cand[:, 1], b[1])
    x1, y1 = np.minimum(cand[:, 2], b[2]), np.minimum(cand[:, 3], b[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda a: (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # noqa: E731
    return int((inter / np.maximum(area(cand) + area(b) - inter, 1e-9)).max() >= 0.5)

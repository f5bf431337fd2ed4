"""The one table of tasks, model names, hyperparameters and their defaults (SPEC §1, §5, §6, §14).

Everything that says "which hyperparameters exist, what they accept, what they default to, for which
task and model" lives here, so the job validator, the trainer and the model package read one source.

Names: the canonical name of a hyperparameter is its CLI v2 spelling (§14: ``learning_rate_scheduler``,
``training_crop_size`` ...); the older spellings of §6 are accepted as aliases and rewritten on input.

Precedence when a trial's configuration is resolved (:func:`resolve_hyperparameters`):
task default  <  model default (§6.2)  <  ``training_parameters``  <  values sampled from ``search_space``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from trainers.errors import SpecError, did_you_mean
from trainers.models.families import family_of
from trainers.models.names import CURATED_HF, CURATED_MMDET, model_backend

# --- tasks (§1) -------------------------------------------------------------------------------

MULTICLASS = "image_classification"
MULTILABEL = "image_classification_multilabel"
DETECTION = "image_object_detection"
SEGMENTATION = "image_instance_segmentation"
TASKS = (MULTICLASS, MULTILABEL, DETECTION, SEGMENTATION)
CLASSIFICATION_TASKS = (MULTICLASS, MULTILABEL)
BOX_TASKS = (DETECTION, SEGMENTATION)



def is_classification(task: str) -> bool:
    """Multi-class or multi-label classification: a resized, center-cropped input and ``validation_*_size``."""
    return task in CLASSIFICATION_TASKS


def has_boxes(task: str) -> bool:
    """Object detection or instance segmentation: whole images in, boxes out (``min_size``, ``max_size`` ...)."""
    return task in BOX_TASKS


# the advanced settings (§3.7) that act on some tasks only; any other acts on every task
ADVANCED_TASKS = {"apply_automl_train_augmentations": BOX_TASKS}


def advanced_applies(name: str, task: str) -> bool:
    return task in ADVANCED_TASKS.get(name, TASKS)


PRIMARY_METRIC = {
    MULTICLASS: "accuracy",
    MULTILABEL: "iou",
    DETECTION: "mean_average_precision",
    SEGMENTATION: "mean_average_precision",
}

# --- built-in model zoo (§5.1) ----------------------------------------------------------------

CLASSIFICATION_MODELS = (
    "mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnest50", "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224",
)
DETECTION_MODELS = (
    "yolov5", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn", "retinanet_resnet50_fpn",
)
SEGMENTATION_MODELS = (
    "maskrcnn_resnet18_fpn", "maskrcnn_resnet34_fpn", "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet101_fpn", "maskrcnn_resnet152_fpn",
)
MODELS = {
    MULTICLASS: CLASSIFICATION_MODELS,
    MULTILABEL: CLASSIFICATION_MODELS,
    DETECTION: DETECTION_MODELS,
    SEGMENTATION: SEGMENTATION_MODELS,
}
DEFAULT_MODEL = {
    MULTICLASS: "vitb16r224",
    MULTILABEL: "vitb16r224",
    DETECTION: "yolov5",
    SEGMENTATION: "maskrcnn_resnet50_fpn",
}

def check_model_name(task: str, model_name: Any, where: str) -> str:
    """Validate a ``model_name`` for a task; hub / model-zoo names are accepted by shape (§5.3)."""
    if not isinstance(model_name, str) or not model_name:
        raise SpecError(f"{where}: expected a model name string, but got {model_name!r}")
    backend = model_backend(model_name)
    if backend == "huggingface" and task not in CLASSIFICATION_TASKS:
        raise SpecError(f"{where}: Hugging Face model {model_name!r} is only valid for classification tasks")
    if backend == "mmdetection" and task not in BOX_TASKS:
        raise SpecError(f"{where}: MMDetection model {model_name!r} is only valid for detection/segmentation tasks")
    if backend == "builtin" and model_name not in MODELS[task]:
        known = [*MODELS[task], *(CURATED_HF if task in CLASSIFICATION_TASKS else CURATED_MMDET.get(task, ()))]
        raise SpecError(
            f"{where}: unknown model_name {model_name!r} for task {task}{did_you_mean(model_name, known)} "
            f"(expected one of {', '.join(MODELS[task])}, a Hugging Face id (org/name) or an MMDetection config name)"
        )
    return model_name


# --- value coercion ---------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "enable", "enabled"}
_FALSE = {"false", "0", "no", "disable", "disabled"}


def as_bool(v: Any) -> bool:
    # Booleans MUST be accepted as YAML booleans and as 0/1 (§3.3).
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, float) and v in (0.0, 1.0):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("expected a boolean (true/false or 0/1)")


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
        return int(v)
    raise ValueError("expected an integer")


def _as_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise ValueError("expected a number")


def _as_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ValueError("expected a string")


def _as_grid(v: Any) -> str:
    # tile_grid_size: '3x2' (v2) or "(3, 2)" (v1); canonical form '3x2' (§14).
    if isinstance(v, (list, tuple)) and len(v) == 2:
        a, b = (_as_int(x) for x in v)
    else:
        m = re.fullmatch(r"\s*\(?\s*(\d+)\s*[x,X]\s*(\d+)\s*\)?\s*", str(v))
        if not m:
            raise ValueError("expected a grid of two integers such as '3x2' or \"(3, 2)\"")
        a, b = int(m.group(1)), int(m.group(2))
    if a < 1 or b < 1:
        raise ValueError("expected positive grid dimensions")
    return f"{a}x{b}"


_KINDS: dict[str, Callable[[Any], Any]] = {
    "bool": as_bool, "int": _as_int, "float": _as_float, "str": _as_str, "grid": _as_grid,
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its canonical (v2) name, type, allowed values and where it applies."""

    name: str
    kind: str
    tasks: tuple[str, ...]
    default: Any = None
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (positive ints are ``low=0, low_open=True``)
    models: str = "all"  # "all" | "yolov5" | "non_yolo" (§6.7 applicability)
    doc: str = ""
    value_aliases: tuple[tuple[Any, Any], ...] = ()  # (older spelling, v2 value) pairs, rewritten on input (§14)

    def coerce(self, value: Any, where: str) -> Any:
        try:
            v = _KINDS[self.kind](value)
        except ValueError as e:
            raise SpecError(f"{where}: {e}, but got {value!r}") from None
        v = dict(self.value_aliases).get(v, v)
        if self.choices is not None and v not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            older = "".join(f" (or {a})" for a, _ in self.value_aliases)
            hint = did_you_mean(value, [*map(str, self.choices), *(str(a) for a, _ in self.value_aliases)]) \
                if isinstance(value, str) else ""
            raise SpecError(f"{where}: expected one of {allowed}{older}, but got {value!r}{hint}")
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            rel = ">" if self.low_open else ">="
            raise SpecError(f"{where}: expected a value {rel} {self.low:g}, but got {value!r}")
        if self.high is not None and v > self.high:
            raise SpecError(f"{where}: expected a value <= {self.high:g}, but got {value!r}")
        return v


ALL = TASKS
CLS = CLASSIFICATION_TASKS
BOX = BOX_TASKS
POS = dict(low=0, low_open=True)
UNIT = dict(low=0.0, high=1.0)

_PARAMS = [
    # §6.1 model-agnostic
    Param("model_name", "str", ALL, doc="architecture (§5)"),
    Param("number_of_epochs", "int", ALL, 15, **POS),
    Param("training_batch_size", "int", ALL, 78, **POS),
    Param("validation_batch_size", "int", ALL, 78, **POS),
    Param("gradient_accumulation_step", "int", ALL, 1, aliases=("grad_accumulation_step",), **POS),
    Param("early_stopping", "bool", ALL, True),
    Param("early_stopping_patience", "int", ALL, 5, **POS),
    Param("early_stopping_delay", "int", ALL, 5, **POS),
    Param("learning_rate", "float", ALL, 0.01, **UNIT),
    Param("learning_rate_scheduler", "str", ALL, "warmup_cosine", aliases=("lr_scheduler",),
          choices=("none", "warmup_cosine", "step")),
    Param("step_lr_gamma", "float", ALL, 0.5, **UNIT),
    Param("step_lr_step_size", "int", ALL, 5, **POS),
    Param("warmup_cosine_lr_cycles", "float", ALL, 0.45, **UNIT),
    Param("warmup_cosine_lr_warmup_epochs", "int", ALL, 2, low=0),
    Param("optimizer", "str", ALL, "sgd", choices=("sgd", "adam", "adamw")),
    Param("momentum", "float", ALL, 0.9, **UNIT),
    Param("weight_decay", "float", ALL, 1e-4, **UNIT),
    Param("nesterov", "bool", ALL, True),
    Param("beta1", "float", ALL, 0.9, **UNIT),
    Param("beta2", "float", ALL, 0.999, **UNIT),
    Param("ams_gradient", "bool", ALL, False, aliases=("amsgrad",)),
    Param("evaluation_frequency", "int", ALL, 1, **POS),
    Param("split_ratio", "float", ALL, None, low=0.0, high=1.0, low_open=True,
          doc="v1 name of the top-level validation_data_size"),
    Param("checkpoint_frequency", "int", ALL, None, **POS),
    Param("layers_to_freeze", "int", ALL, None, low=0),
    # §14 v2-only
    Param("distributed", "bool", ALL, None,
          doc="None: a trial uses all GPUs of its node (§3.8); false: one GPU; "
              "true: all GPUs (or workers_per_node on CPU)"),
    Param("enable_onnx_normalization", "bool", ALL, False),
    Param("number_of_workers", "int", ALL, None, low=0),
    Param("random_seed", "int", ALL, None, low=0),
    Param("log_training_metrics", "bool", ALL, False),
    Param("log_validation_loss", "bool", ALL, True),
    Param("augmentations", "str", ALL, None),
    Param("checkpoint_run_id", "str", ALL, None),
    Param("validation_iou_threshold", "float", BOX, 0.5, low=0.1, high=1.0),
    # §6.4 classification
    Param("weighted_loss", "int", CLS, 0, choices=(0, 1, 2)),
    Param("validation_resize_size", "int", CLS, 256, aliases=("valid_resize_size",), **POS),
    Param("validation_crop_size", "int", CLS, 224, aliases=("valid_crop_size",), **POS),
    Param("training_crop_size", "int", CLS, 224, aliases=("train_crop_size",), **POS),
    # §6.5 / §6.6 detection and segmentation
    Param("validation_metric_type", "str", BOX, "voc", choices=("none", "coco", "voc", "coco_voc")),
    Param("min_size", "int", BOX, 600, models="non_yolo", **POS),
    Param("max_size", "int", BOX, 1333, models="non_yolo", **POS),
    Param("box_score_threshold", "float", BOX, 0.3, aliases=("box_score_thresh",), **UNIT),
    Param("nms_iou_threshold", "float", BOX, 0.5,
          aliases=("box_nms_thresh", "box_iou_thresh", "nms_iou_thresh"), **UNIT),
    Param("box_detections_per_image", "int", BOX, 100, aliases=("box_detections_per_img",),
          models="non_yolo", **POS),
    Param("tile_grid_size", "grid", BOX, None, models="non_yolo"),
    Param("tile_overlap_ratio", "float", BOX, 0.25, models="non_yolo", **UNIT),
    Param("tile_predictions_nms_threshold", "float", BOX, 0.25, aliases=("tile_predictions_nms_thresh",),
          models="non_yolo", **UNIT),
    Param("image_size", "int", (DETECTION,), 640, aliases=("img_size",), models="yolov5", **POS),
    Param("model_size", "str", (DETECTION,), "medium", models="yolov5",
          choices=("small", "medium", "large", "extra_large"), value_aliases=(("xlarge", "extra_large"),)),
    Param("multi_scale", "bool", (DETECTION,), False, models="yolov5"),
]

PARAMS: dict[str, Param] = {p.name: p for p in _PARAMS}
ALIASES: dict[str, str] = {a: p.name for p in _PARAMS for a in p.aliases}
# Keys of training_parameters that are not hyperparameters of a trial.
NON_SWEEPABLE = {"advanced_settings", "checkpoint_run_id"}
# Keys that act once per job, not per trial: a search_space that sweeps them would sweep nothing.
JOB_LEVEL = {
    "split_ratio": "the train/validation split is made once per job, before any trial",
    "distributed": "the trials' workers are planned once per job",
}
# Keys the managed service accepts whose syntax the spec does not define: accepted, and a warning says what is
# not applied (Job.warnings), rather than refused.
ACCEPTED_NOT_APPLIED = {
    "augmentations": "the service's custom augmentation string is not applied: visionsweep trains with the "
                     "built-in augmentations of §7.1 (advanced_settings turns parts of them off for detection and "
                     "segmentation, §7.2)",
}

# Task defaults that differ from the parameter table's (§6.2); a model family's own defaults (the ViTs', YOLOv5's,
# the detectors', Hugging Face's, an MMDetection config's optimiser) are in its entry in trainers.models.families.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {MULTILABEL: {"learning_rate": 0.035}}


def task_model_defaults(task: str, model_name: str) -> dict[str, Any]:
    """Defaults of every hyperparameter that applies to ``task`` and ``model_name`` (§6.2 resolved): the parameter
    table's, then the task's, then the model family's (``trainers.models.families``)."""
    out = {p.name: p.default for p in _PARAMS if task in p.tasks and _applies(p, model_name)}
    out["model_name"] = model_name
    out.update(TASK_DEFAULTS.get(task, {}))
    out.update(family_of(model_name, boxes=has_boxes(task)).defaults(task, model_name))
    return out


def _applies(p: Param, model_name: str | None) -> bool:
    """§6.7: the yolov5 settings apply to yolov5 only (MMDetection models included: they take min_size and
    max_size, not image_size); the others of the box tasks to every model but yolov5."""
    if p.models == "all" or model_name is None:
        return True
    is_yolo = model_name == "yolov5"
    return is_yolo if p.models == "yolov5" else not is_yolo


def canonical_name(key: str) -> str:
    return ALIASES.get(key, key)


def check_applies(task: str, name: str, where: str, model_name: str | None = None) -> Param:
    """The hyperparameter ``name`` exists, is supported here, and applies to ``task`` (and ``model_name``)."""
    p = PARAMS.get(name)
    if p is None:
        raise SpecError(f"{where}: unknown hyperparameter {name!r}{did_you_mean(name, [*PARAMS, *ALIASES])}")
    if task not in p.tasks:
        raise SpecError(f"{where}: hyperparameter {name!r} does not apply to task {task}")
    if not _applies(p, model_name):
        raise SpecError(f"{where}: hyperparameter {name!r} does not apply to model {model_name}")
    return p


def check_param(task: str, name: str, value: Any, where: str, model_name: str | None = None) -> Any:
    """Validate one hyperparameter value for ``task`` (and ``model_name`` when known); returns it coerced."""
    p = check_applies(task, name, where, model_name)
    if name == "model_name":
        return check_model_name(task, value, where)
    return p.coerce(value, where)


def resolve_hyperparameters(task: str, fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """One trial's full hyperparameters: task < model defaults < ``fixed`` < ``sampled``.

    ``fixed`` and ``sampled`` use canonical names and have been validated for the task; here they are
    checked once more against the chosen model (a sampled ``model_name`` decides which apply) and
    sampled values are coerced to the parameter's type (a ``quniform`` batch size becomes an int).
    """
    model_name = sampled.get("model_name") or fixed.get("model_name") or DEFAULT_MODEL[task]
    out = task_model_defaults(task, model_name)
    if isinstance(fixed.get("advanced_settings"), Mapping):  # §3.7 switches the trial's augmentations read
        out["advanced_settings"] = dict(fixed["advanced_settings"])
    for source_name, source in (("training_parameters", fixed), ("search_space", sampled)):
        for k, v in source.items():
            if k in NON_SWEEPABLE:
                continue
            out[k] = check_param(task, k, v, f"{source_name}.{k}", model_name)
    return out

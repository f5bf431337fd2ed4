"""Model families registered by name: which model names each owns, its default hyperparameters, and its builder.

A family is a set of models built by one library the same way: the built-in classifiers (torchvision, timm), Hugging
Face ``transformers`` classifiers, torchvision's detectors, YOLOv5 (mmyolo) and MMDetection's model zoo. What differs
between families is said here, once, in the family's entry:

* ``owns``: the model names it builds, by name and by whether the task has boxes (the same name may be a classifier
  for one task and nothing for another: the family of the kind's built-in zoo takes the names no other claims, and
  its builder refuses those outside its zoo);
* ``defaults(task, model_name)``: the hyperparameters whose default differs for its models (§6.2, §13 A13), laid
  over the task's defaults by ``trainers.hyperparameters.task_model_defaults``;
* ``builder``: ``module:function`` of its builder, imported only when a model is built
  (``trainers.models.factory.create_model``, the one place that picks it).

A leaf module like ``trainers.models.names`` (no torch, no optional library): the job validator reads the defaults
through ``trainers.hyperparameters``. Defaults that need a model's own files (a transformers config's input size, an
MMDetection config's optimiser) import their family's module when asked, as before.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from trainers.models.names import is_hf_name, model_backend
from trainers.registry import Registry

YOLO = "yolov5"


@dataclass(frozen=True)
class Family:
    name: str
    boxes: bool  # the family's models are detectors (detection, segmentation); False: classifiers
    owns: Callable[[str], bool]  # the model names it builds, among those of its kind
    defaults: Callable[[str, str], dict[str, Any]]  # (task, model_name) -> its overrides of the task defaults
    builder: str  # "module:function", see trainers.models.factory for the signature

    def load_builder(self) -> Callable[..., Any]:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


FAMILIES: Registry[Family] = Registry("model family")


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def family_of(model_name: str, boxes: bool) -> Family:
    """The one family that owns ``model_name`` among those of its kind (``boxes``: a detection or segmentation task).
    Every name has one: the kind's built-in zoo takes the names no other family claims."""
    found = [f for f in (FAMILIES.get(n) for n in FAMILIES) if f.boxes == boxes and f.owns(model_name)]
    if len(found) != 1:  # a registration error, not a user's: the owns predicates of a kind must partition names
        raise ValueError(f"model {model_name!r} ({'boxes' if boxes else 'classification'}) is owned by "
                         f"{len(found)} families ({', '.join(f.name for f in found) or 'none'}); expected one")
    return found[0]


# --- the built-in classifiers (torchvision, timm; §5.1) ------------------------------------------------------------

# §6.2's ViT defaults: batch size, and learning rate by task (keys: the task literals of trainers.hyperparameters,
# which this leaf cannot import: hyperparameters imports it; tests/test_model_factory.py checks the keys)
_VIT_BATCH = {"vits16r224": 128, "vitb16r224": 48, "vitl16r224": 10}
_VIT_LR = {
    "image_classification": {"vits16r224": 0.0125, "vitb16r224": 0.0125, "vitl16r224": 0.001},
    "image_classification_multilabel": {"vits16r224": 0.025, "vitb16r224": 0.025, "vitl16r224": 0.002},
}


def _classifier_defaults(task: str, model_name: str) -> dict[str, Any]:
    if model_name not in _VIT_BATCH:
        return {}
    out: dict[str, Any] = {"training_batch_size": _VIT_BATCH[model_name],
                           "validation_batch_size": _VIT_BATCH[model_name]}
    if model_name in _VIT_LR.get(task, {}):
        out["learning_rate"] = _VIT_LR[task][model_name]
    return out


register(Family("classifiers", boxes=False, owns=lambda m: not is_hf_name(m), defaults=_classifier_defaults,
                builder="trainers.models.classifiers:create"))


# --- Hugging Face transformers classifiers (§5.3) -----------------------------------------------------------------

# Their defaults are not given (§13 A13): AdamW at lr 5e-5 with 32 images a batch, as the transformers
# image-classification fine-tuning guide (and the ViT / DeiT / BEiT model cards' fine-tuning recipes, Adam-family at
# 1e-5..1e-4) do, instead of the CNNs' SGD at lr 0.01.
HF_FINE_TUNING = {"optimizer": "adamw", "learning_rate": 5e-5, "training_batch_size": 32, "validation_batch_size": 32}


def _hf_defaults(task: str, model_name: str) -> dict[str, Any]:
    from trainers.models.huggingface import default_input_size

    out: dict[str, Any] = dict(HF_FINE_TUNING)
    size = default_input_size(model_name)  # the model's own input size, where its config is here
    if size:
        out.update(training_crop_size=size, validation_crop_size=size, validation_resize_size=size)
    return out


register(Family("huggingface", boxes=False, owns=is_hf_name, defaults=_hf_defaults,
                builder="trainers.models.huggingface:create"))


# --- detectors: torchvision's (§5.1), YOLOv5 (§5.2), MMDetection's zoo (§5.3) --------------------------------------

# §6.2's defaults of the two-stage / RetinaNet detectors, and the starting point of an MMDetection model's
_BOX_MODEL = {"training_batch_size": 2, "validation_batch_size": 1, "learning_rate": 0.005}
# §6.2 / §6.6: YOLOv5's
_YOLO = {"number_of_epochs": 30, "training_batch_size": 16, "validation_batch_size": 16, "learning_rate": 0.01,
         "box_score_threshold": 0.1}


def _is_mmdet(model_name: str) -> bool:
    return model_backend(model_name) == "mmdetection"


def _mmdet_defaults(task: str, model_name: str) -> dict[str, Any]:
    from trainers.models.openmmlab import optimizer_defaults  # §13 A13: the zoo config's own optimiser

    return {**_BOX_MODEL, **optimizer_defaults(model_name, _BOX_MODEL["training_batch_size"])}


register(Family("detectors", boxes=True, owns=lambda m: m != YOLO and not _is_mmdet(m),
                defaults=lambda task, m: dict(_BOX_MODEL), builder="trainers.models.detectors:create"))
register(Family("yolov5", boxes=True, owns=lambda m: m == YOLO, defaults=lambda task, m: dict(_YOLO),
                builder="trainers.models.openmmlab:create"))
register(Family("mmdetection", boxes=True, owns=_is_mmdet, defaults=_mmdet_defaults,
                builder="trainers.models.openmmlab:create"))

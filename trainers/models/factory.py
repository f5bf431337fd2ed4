"""The one model factory: ``create_model`` builds any model of any family, for training and from a package.

Training (``Task.build_model``) and package loading (``Task.package_model``) both call :func:`create_model`, so a
model is built the same way both times, and the choice of builder is made here only: the name is checked against the
task (the job file's rule, ``trainers.hyperparameters.check_model_name``), its family looked up in
``trainers.models.families``, and the family's builder imported and called. Each family module has a builder of one
signature (``create`` in ``classifiers``, ``huggingface``, ``detectors``, ``openmmlab``)::

    create(model_name, *, num_classes, settings, weights, architecture, segmentation, package_folder, where)

A builder builds its own family only; what a model starts from (``weights``) and how a package's model is rebuilt
(``package_folder``: its recorded architecture files) is the family's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers import hyperparameters as hp
from trainers.models.families import family_of


def create_model(model_name: str, *, task: str, num_classes: int, settings: dict[str, Any], weights: Any = None,
                 architecture: dict[str, Any] | None = None, segmentation: bool = False,
                 package_folder: str | Path | None = None, where: str = "model_name"):
    """A model of ``model_name`` for ``task`` with ``num_classes`` classes, not yet trained.

    ``settings``: the trial's hyperparameters, or a package's inference settings (a classifier reads
    ``training_crop_size``, a detector its §9.5 settings); ``weights``: what a new model starts from (an
    ``InitialWeights``, a weights file or package, or None: random initialisation); ``architecture``: the choices a
    package or checkpoint recorded (None: those that follow from ``weights``); ``package_folder``: the package whose
    model is rebuilt (its weights are loaded afterwards by ``trainers.package``); ``where`` leads the errors.
    An unknown name, or one of another task, is a ``SpecError`` naming the known ones."""
    hp.check_model_name(task, model_name, where)
    build = family_of(model_name, boxes=hp.has_boxes(task)).load_builder()
    return build(model_name, num_classes=num_classes, settings=settings, weights=weights, architecture=architecture,
                 segmentation=segmentation, package_folder=None if package_folder is None else Path(package_folder),
                 where=where)

"""Tasks registered by their ``task:`` literal (SPEC §1): the training loop, the controller, packaging, ONNX export,
serving and the run report ask the task, never ``if task == ...`` (``tests/test_layout.py`` keeps scheduler/, serving/,
trainers/package/ and visionsweep/ free of such comparisons; the job file's tables in ``trainers/hyperparameters.py``
say which settings and models go with which task).

Each module registers its task classes; :func:`make_task` builds one for a set of class names.
"""

from __future__ import annotations

from typing import Sequence

from trainers.errors import VisionsweepError
from trainers.registry import Registry
from trainers.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    return TASKS.register(cls.name, cls)


def make_task(task: str, classes: Sequence[str]) -> Task:
    return TASKS.get(task)(classes)


def known_task(task: str, refusal: str) -> type[Task]:
    """The class of ``task``; a ``VisionsweepError`` saying ``refusal`` for a task this version does not know
    (a package or file written by another tool)."""
    if task not in TASKS:
        raise VisionsweepError(refusal)
    return TASKS.get(task)


from trainers.tasks.classification import ClassificationTask, MultiClassTask, MultiLabelTask  # noqa: E402
from trainers.tasks.detection import DetectionTask, SegmentationTask  # noqa: E402

for _cls in (MultiClassTask, MultiLabelTask, DetectionTask, SegmentationTask):
    register_task(_cls)

__all__ = ["Task", "TASKS", "register_task", "make_task", "known_task", "ClassificationTask", "DetectionTask",
           "SegmentationTask"]

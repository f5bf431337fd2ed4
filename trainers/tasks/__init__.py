"""Tasks registered by their ``task:`` literal (SPEC §1): the training loop, the controller and serving ask
the task, never ``if task == ...``.

Each module registers its task classes; :func:`make_task` builds one for a set of class names.
"""

from __future__ import annotations

from typing import Sequence

from trainers.registry import Registry
from trainers.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    return TASKS.register(cls.name, cls)


def make_task(task: str, classes: Sequence[str]) -> Task:
    return TASKS.get(task)(classes)


from trainers.tasks.classification import ClassificationTask, MultiClassTask, MultiLabelTask  # noqa: E402
from trainers.tasks.detection import DetectionTask, SegmentationTask  # noqa: E402

for _cls in (MultiClassTask, MultiLabelTask, DetectionTask, SegmentationTask):
    register_task(_cls)

__all__ = ["Task", "TASKS", "register_task", "make_task", "ClassificationTask", "DetectionTask", "SegmentationTask"]

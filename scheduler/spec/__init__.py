"""The job YAML: a validated model of the managed service's AutoML image job (SPEC §3, §4, §8, §14).

``load_job(path)`` reads a job file written for the managed service, unchanged, and returns a
:class:`Job`. Every problem is a :class:`~trainers.errors.SpecError` whose message starts with
``FILE:LINE: yaml.path:`` and says what was expected, e.g.::

    job.yml:7: limits.max_trials: expected an integer between 1 and 1000, but got 0

Both key spellings of §14 are accepted (``lr_scheduler`` / ``learning_rate_scheduler``) and rewritten
to the v2 name.

The service's files are accepted as the service accepts them, and nothing is accepted and then silently
ignored: a key the spec defines acts; or it does not apply to the job and is refused as such
(``apply_automl_train_augmentations`` outside detection and segmentation, the yolov5 settings for other
models, a job-level key in a search space); or it is accepted with a note or warning that says what it does
here (``augmentations``, whose syntax the spec does not give, is not applied; ``apply_mosaic_for_yolo``
without yolov5 has no effect). ``compute`` names the service's compute target: it is kept in the resolved job,
and the trials run on the Ray cluster instead (:meth:`Job.notes`). Whatever some trial could not train with (a crop,
a layer count, a distribution's extreme value) fails the job here, before any trial.

Our own additions live under one top-level key, ``visionsweep:`` (:class:`Extensions`), so they never
change the meaning of a spec key. One exception keeps its place because a policy is chosen by its
``type``: ``sweep.early_termination.type: asha`` (``scheduler.policies.configs.AshaSettings``), which ``validate``
and the README mark as a visionsweep extension.

Credentials (``visionsweep.storage_options`` values under key-, token-, password-, SAS- or
connection-string-like names, and secrets inside URLs: SAS ``sig=``, presigned-URL signatures,
``AccountKey=``, ``user:password@``) are shown as ``***`` in everything derived from the job: the stored
job file, the resolved job, ``validate``'s output (:func:`redact`).

The package, one concern per module: ``schema`` (the keys as pydantic models), ``load`` (YAML with line numbers),
``checks`` (rules across keys), ``job`` (the :class:`Job` facade), ``redact`` (credentials).
"""

from scheduler.spec.job import Job
from scheduler.spec.load import check_data_paths, load_job, parse_job
from scheduler.spec.redact import MASK, redact
from scheduler.spec.schema import (
    AdvancedSettings,
    Cache,
    DataInput,
    Extensions,
    JobSpec,
    Limits,
    Properties,
    Sweep,
    Tracking,
)

__all__ = ["MASK", "AdvancedSettings", "Cache", "DataInput", "Extensions", "Job", "JobSpec", "Limits", "Properties",
           "Sweep", "Tracking", "check_data_paths", "load_job", "parse_job", "redact"]

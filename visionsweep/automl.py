"""The service SDK's AutoML image jobs (``azure.ai.ml.automl``), so that a notebook migrates by its imports alone::

    from visionsweep import automl, Input
    from visionsweep.automl import SearchSpace, ClassificationPrimaryMetrics
    from visionsweep.sweep import Choice, Uniform, BanditPolicy
    from visionsweep.constants import AssetTypes

    job = automl.image_classification(training_data=Input(type=AssetTypes.MLTABLE, path="data/train"),
                                      target_column_name="label",
                                      primary_metric=ClassificationPrimaryMetrics.ACCURACY)
    job.set_limits(timeout_minutes=60, max_trials=10, max_concurrent_trials=2)
    job.extend_search_space([SearchSpace(model_name=Choice(["vitb16r224", "vits16r224"]),
                                         learning_rate=Uniform(0.001, 0.01))])
    job.set_sweep(sampling_algorithm="Random", early_termination=BanditPolicy(evaluation_interval=2, slack_factor=0.2))

One source of truth: a job object holds the CLI job file's mapping (:meth:`ImageJob._to_yaml`), and every call
validates that mapping with the job-file validator (``scheduler.spec.parse_job``). So a Python job and the YAML it
dumps are the same job, and a wrong argument fails with the YAML path's message, located at the call instead of a
line: ``set_limits: limits.max_trials: expected an integer between 1 and 1000, but got 0``.
"""

from __future__ import annotations

import copy
import re
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from trainers import hyperparameters as hp
from trainers.errors import SpecError
from visionsweep.inputs import Input
from visionsweep.sweep import DISTRIBUTIONS, POLICIES, _SweepObject, from_yaml

SCHEMA = "https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json"


class _Metric(str, Enum):
    def __str__(self) -> str:
        return self.value


class ClassificationPrimaryMetrics(_Metric):
    """Multi-class classification is optimised for ``ACCURACY`` (§1); the service's other members exist so a
    notebook that names one gets the job file's error for it."""

    ACCURACY = "accuracy"
    AUC_WEIGHTED = "auc_weighted"
    NORM_MACRO_RECALL = "norm_macro_recall"
    AVERAGE_PRECISION_SCORE_WEIGHTED = "average_precision_score_weighted"
    PRECISION_SCORE_WEIGHTED = "precision_score_weighted"


class ClassificationMultilabelPrimaryMetrics(_Metric):
    """Multi-label classification is optimised for ``IOU`` (§1)."""

    IOU = "iou"
    ACCURACY = "accuracy"
    AUC_WEIGHTED = "auc_weighted"
    NORM_MACRO_RECALL = "norm_macro_recall"
    AVERAGE_PRECISION_SCORE_WEIGHTED = "average_precision_score_weighted"
    PRECISION_SCORE_WEIGHTED = "precision_score_weighted"


class ObjectDetectionPrimaryMetrics(_Metric):
    MEAN_AVERAGE_PRECISION = "mean_average_precision"


class InstanceSegmentationPrimaryMetrics(_Metric):
    MEAN_AVERAGE_PRECISION = "mean_average_precision"


class SearchSpace:
    """One sub-space of a conditional search space: hyperparameter name -> distribution (``visionsweep.sweep``),
    v1 or v2 names as the job file takes them. ``ImageClassificationSearchSpace`` and
    ``ImageObjectDetectionSearchSpace`` are the same class under the service's task-specific names."""

    def __init__(self, **distributions: _SweepObject):
        for name, d in distributions.items():
            if not isinstance(d, _SweepObject) or d.type not in DISTRIBUTIONS:
                raise TypeError(f"SearchSpace: {name} must be a distribution from visionsweep.sweep (Choice, "
                                f"Uniform, ...), but got {d!r}")
        self.distributions = dict(distributions)

    def _to_yaml(self) -> dict[str, Any]:
        return {name: d._to_yaml() for name, d in self.distributions.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and other._to_yaml() == self._to_yaml()

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(f'{k}={v!r}' for k, v in self.distributions.items())})"


ImageClassificationSearchSpace = ImageObjectDetectionSearchSpace = SearchSpace


def _plain(v: Any) -> Any:
    """Enums, inputs and sweep objects as the YAML values they stand for."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, (Input, _SweepObject, SearchSpace)):
        return v._to_yaml()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


_LOCATION = re.compile(r"^(\s*)<job>(:\d+)?: ", re.M)  # where parse_job locates a key of a text with no file


class ImageJob:
    """An AutoML image job built in Python: the service SDK's ``image_*`` job, writing the CLI job file.

    Attributes the SDK has (``name``, ``display_name``, ``experiment_name``, ``description``, ``tags``, ``compute``,
    ``task``, ``primary_metric``, ``target_column_name``, ``training_data``, ``validation_data``) read and write
    the job file's keys. ``visionsweep`` holds visionsweep's own settings (the job file's ``visionsweep:`` key).
    """

    _TASK = ""
    _KEYS = ("name", "display_name", "experiment_name", "description", "tags", "compute", "log_verbosity",
             "primary_metric", "target_column_name", "training_data", "validation_data", "validation_data_size",
             "properties", "outputs", "visionsweep")

    def __init__(self, *, training_data: Input | None = None, target_column_name: str | None = None,
                 primary_metric: str | None = None, validation_data: Input | None = None,
                 validation_data_size: float | None = None, compute: str | None = None,
                 experiment_name: str | None = None, name: str | None = None, display_name: str | None = None,
                 description: str | None = None, tags: dict[str, Any] | None = None,
                 log_verbosity: str | None = None, properties: dict[str, Any] | None = None,
                 outputs: dict[str, Any] | None = None, visionsweep: dict[str, Any] | None = None,
                 base_dir: str | Path | None = None, _validate: bool = True):
        given = {k: v for k, v in locals().items() if k in self._KEYS and v is not None}  # the job file's keys
        self.__dict__["_data"] = {"$schema": SCHEMA, "type": "automl", "task": self._TASK}
        # relative data paths are read from here (default: the working folder of the notebook or script)
        self.__dict__["_base_dir"] = Path(base_dir or Path.cwd()).resolve()
        self._data.update({k: _plain(v) for k, v in given.items()})
        if _validate:
            self._check(f"automl.{self._TASK}")

    # -- the job file's keys as attributes ------------------------------------------------------------------
    def __getattr__(self, key: str) -> Any:
        if key in self._KEYS:
            v = self._data.get(key)
            if key in ("training_data", "validation_data") and v is not None:
                return Input._from_yaml(v)
            return copy.deepcopy(v)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self._KEYS:
            raise AttributeError(f"{type(self).__name__}: cannot set {key!r}; the job's keys are "
                                 f"{', '.join(self._KEYS)}")
        before = copy.deepcopy(self._data)
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = _plain(value)
        self._check(f"setting {key}", before)

    @property
    def task(self) -> str:
        return self._TASK

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self._data.get("limits", {}))

    @property
    def training_parameters(self) -> dict[str, Any]:
        return copy.deepcopy(self._data.get("training_parameters", {}))

    @property
    def search_space(self) -> list[SearchSpace] | None:
        subs = self._data.get("search_space")
        if subs is None:
            return None
        return [SearchSpace(**{k: from_yaml(d, DISTRIBUTIONS) for k, d in sub.items()}) for sub in subs]

    @property
    def sweep(self) -> dict[str, Any] | None:
        s = self._data.get("sweep")
        if s is None:
            return None
        out = dict(s)
        if "early_termination" in out:
            out["early_termination"] = from_yaml(out["early_termination"], POLICIES)
        return out

    # -- the SDK's methods ----------------------------------------------------------------------------------
    def set_limits(self, *, timeout_minutes: int | None = None, max_trials: int | None = None,
                   max_concurrent_trials: int | None = None, **kwargs: Any) -> None:
        """``limits``: the whole job's time budget in minutes (default 10080), the number of trials (default 1;
        more than 1 without a search space is AutoMode) and how many run at a time (default 1). Arguments left
        None keep their current value."""
        given = dict(timeout_minutes=timeout_minutes, max_trials=max_trials,
                     max_concurrent_trials=max_concurrent_trials, **kwargs)
        self._change("set_limits", lambda d: d.setdefault("limits", {}).update(
            {k: v for k, v in given.items() if v is not None}))

    def set_training_parameters(self, **parameters: Any) -> None:
        """``training_parameters``: fixed hyperparameters for every trial (``model_name``, ``learning_rate``,
        ``number_of_epochs``, ``advanced_settings`` ...; v1 or v2 names, as the job file takes them). Each call
        adds to or replaces the parameters it names; a parameter given None is removed."""
        def change(d: dict[str, Any]) -> None:
            tp = d.setdefault("training_parameters", {})
            for k, v in parameters.items():
                if v is None:
                    tp.pop(k, None)
                else:
                    tp[k] = _plain(v)
            if not tp:
                d.pop("training_parameters")
        self._change("set_training_parameters", change)

    set_image_model = set_training_parameters  # the SDK's earlier name

    def extend_search_space(self, value: SearchSpace | list[SearchSpace]) -> None:
        """Add sub-spaces to the search space (a list of :class:`SearchSpace`; a trial samples one sub-space,
        then each distribution in it). A job with a search space is a manual sweep; give it ``set_sweep``."""
        subs = value if isinstance(value, (list, tuple)) else [value]
        for s in subs:
            if not isinstance(s, SearchSpace):
                raise TypeError(f"extend_search_space: expected SearchSpace objects, but got {s!r}")
        self._change("extend_search_space", lambda d: d.setdefault("search_space", []).extend(
            s._to_yaml() for s in subs))

    def set_sweep(self, *, sampling_algorithm: str, early_termination: _SweepObject | None = None) -> None:
        """``sweep``: ``sampling_algorithm`` is ``Random``, ``Grid`` or ``Bayesian`` (any case); ``early_termination``
        a policy from ``visionsweep.sweep`` (``BanditPolicy``, ``MedianStoppingPolicy``,
        ``TruncationSelectionPolicy``, or visionsweep's ``AshaPolicy``), default none."""
        sweep: dict[str, Any] = {"sampling_algorithm": _plain(sampling_algorithm)}
        if early_termination is not None:
            if not isinstance(early_termination, _SweepObject) or early_termination.type not in POLICIES:
                raise TypeError(f"set_sweep: early_termination must be a policy from visionsweep.sweep, but got "
                                f"{early_termination!r}")
            sweep["early_termination"] = early_termination._to_yaml()
        self._change("set_sweep", lambda d: d.__setitem__("sweep", sweep))

    # -- the job file ---------------------------------------------------------------------------------------
    def _to_yaml(self) -> dict[str, Any]:
        """The CLI job file's mapping."""
        return copy.deepcopy(self._data)

    def dump(self, dest: str | Path | None = None) -> str:
        """Write the CLI job file (``visionsweep run`` and the service's CLI take it); returns its text.
        Relative data paths are written as given: keep the file where the notebook runs, or give absolute paths."""
        self.validated()
        text = yaml.safe_dump(_in_file_order(self._data), sort_keys=False)
        if dest is not None:
            Path(dest).write_text(text, encoding="utf-8")
        return text

    def validated(self):
        """The validated job (``scheduler.spec.Job``) the controller runs."""
        return self._parse(self._data)

    def _parse(self, data: dict[str, Any]):
        from scheduler.spec import parse_job

        return parse_job(yaml.safe_dump(data, sort_keys=False), base_dir=self._base_dir)

    def _check(self, where: str, before: dict[str, Any] | None = None) -> None:
        """Validate the job as a call leaves it. A notebook gives the search space and the sweep in two calls, in
        either order: until both are there, the one given alone is checked by itself (its keys, types, ranges)
        and the rules that join them wait for the other (``dump``, ``validated``, submitting or running the job
        check the whole job)."""
        from scheduler.spec.load import check_schema

        data = self._data
        try:
            if "search_space" in data and "sweep" not in data:
                data = {**data, "sweep": {"sampling_algorithm": "random"}}
            elif "sweep" in data and "search_space" not in data:
                check_schema(data)
                data = {k: v for k, v in data.items() if k != "sweep"}
            self._parse(data)
        except SpecError as e:
            if before is not None:
                self.__dict__["_data"] = before  # a refused change leaves the job as it was
            raise SpecError(_LOCATION.sub(lambda m: f"{m.group(1)}{where}: ", str(e))) from None

    def _change(self, where: str, change) -> None:
        before = copy.deepcopy(self._data)
        change(self._data)
        self._check(where, before)

    def __eq__(self, other: object) -> bool:
        """The same job: both validate to the same resolved job (defaults filled, v2 names)."""
        if not isinstance(other, ImageJob):
            return NotImplemented
        return self.validated().resolved() == other.validated().resolved()

    def __repr__(self) -> str:
        """The job file with credentials as ``***`` (a notebook shows a cell's last value)."""
        from scheduler.spec.redact import mask_secret_keys, redact_strings

        shown = copy.deepcopy(self._data)
        ext = shown.get("visionsweep")
        if isinstance(ext, dict) and "storage_options" in ext:
            ext["storage_options"] = mask_secret_keys(ext["storage_options"])
        try:
            shown = redact_strings(shown, self._parse(self._data).secrets())
        except SpecError:
            shown = redact_strings(shown, [])  # still the secrets inside URLs
        return f"{type(self).__name__}(\n{yaml.safe_dump(_in_file_order(shown), sort_keys=False)})"


def _in_file_order(data: dict[str, Any]) -> dict[str, Any]:
    """The keys in the order of the job file's schema (as the service's example files have them)."""
    from scheduler.spec import JobSpec

    order = [f.alias or name for name, f in JobSpec.model_fields.items()]
    return dict(sorted(data.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


class ImageClassificationJob(ImageJob):
    _TASK = hp.MULTICLASS


class ImageClassificationMultilabelJob(ImageJob):
    _TASK = hp.MULTILABEL


class ImageObjectDetectionJob(ImageJob):
    _TASK = hp.DETECTION


class ImageInstanceSegmentationJob(ImageJob):
    _TASK = hp.SEGMENTATION


JOBS = {c._TASK: c for c in (ImageClassificationJob, ImageClassificationMultilabelJob, ImageObjectDetectionJob,
                             ImageInstanceSegmentationJob)}


def image_classification(**kwargs: Any) -> ImageClassificationJob:
    """A multi-class image classification job (primary metric ``accuracy``). Keyword arguments as
    :class:`ImageJob`: ``training_data`` and ``target_column_name`` are required; ``validation_data`` (or
    ``validation_data_size``, default 0.2 of the training data), ``primary_metric``, ``compute`` (the service's
    compute target, kept in the job file; trials run on the Ray cluster), ``experiment_name``, ``name``, ``tags``."""
    return ImageClassificationJob(**kwargs)


def image_classification_multilabel(**kwargs: Any) -> ImageClassificationMultilabelJob:
    """A multi-label image classification job (primary metric ``iou``); arguments as :func:`image_classification`."""
    return ImageClassificationMultilabelJob(**kwargs)


def image_object_detection(**kwargs: Any) -> ImageObjectDetectionJob:
    """An object detection job (primary metric ``mean_average_precision``); arguments as
    :func:`image_classification`."""
    return ImageObjectDetectionJob(**kwargs)


def image_instance_segmentation(**kwargs: Any) -> ImageInstanceSegmentationJob:
    """An instance segmentation job (primary metric ``mean_average_precision``); arguments as
    :func:`image_classification`."""
    return ImageInstanceSegmentationJob(**kwargs)


def load_job(source: str | Path) -> ImageJob:
    """A CLI job file as the job object that dumps it (``dump`` then ``load_job`` gives the same job back)."""
    from scheduler.spec import load_job as load_spec

    path = Path(source)
    spec = load_spec(path)  # the job file's own errors, with its lines
    data = yaml.safe_load(spec.text)
    cls = JOBS[data["task"]]
    job = cls(base_dir=path.resolve().parent, _validate=False)
    job._data.clear()
    job._data.update(data)
    return job


__all__ = ["ClassificationMultilabelPrimaryMetrics", "ClassificationPrimaryMetrics", "ImageClassificationJob",
           "ImageClassificationMultilabelJob", "ImageClassificationSearchSpace", "ImageInstanceSegmentationJob",
           "ImageJob", "ImageObjectDetectionJob", "ImageObjectDetectionSearchSpace",
           "InstanceSegmentationPrimaryMetrics", "ObjectDetectionPrimaryMetrics", "SearchSpace",
           "image_classification", "image_classification_multilabel", "image_instance_segmentation",
           "image_object_detection", "load_job"]

"""A validated job: the spec, where it came from, and what is resolved from it (mode, primary metric, the models
a trial can train, notes and warnings, the resolved and the redacted job file)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scheduler import automode
from scheduler.policies.configs import AshaSettings, TruncationSelectionSettings
from scheduler.spec.redact import (
    MASK,
    SECRET_KEY,
    mask_secret_keys,
    redact,
    redact_strings,
    secret_spans,
    secret_values,
    walk_items,
)
from scheduler.spec.schema import AdvancedSettings, JobSpec
from trainers import hyperparameters as hp


@dataclass
class Job:
    """A validated job: the spec, where it came from, and the values resolved from it."""

    spec: JobSpec
    source: Path | None
    base_dir: Path
    text: str
    training_parameters: dict[str, Any]  # canonical v2 names, coerced
    search_space: list[dict[str, Any]] | None  # canonical names -> Distribution
    advanced: AdvancedSettings = field(default_factory=AdvancedSettings)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def primary_metric(self) -> str:
        return hp.PRIMARY_METRIC[self.spec.task]

    @property
    def mode(self) -> str:
        """``single``, ``manual`` or ``automode`` (§4.1)."""
        if self.search_space is not None:
            return "manual"
        return "automode" if self.spec.limits.max_trials > 1 else "single"

    def model_names(self) -> list[str]:
        """Every model_name a trial of the job can train (AutoMode: every candidate it may pick)."""
        return job_models(self.task, self.training_parameters, self.search_space, self.spec.limits.max_trials)

    def model_sizes(self) -> list[str]:
        """The yolov5 ``model_size`` values a trial can take (the default when the job sets none)."""
        out = [self.training_parameters["model_size"]] if "model_size" in self.training_parameters else []
        for sub in self.search_space or []:
            d = sub.get("model_size")
            out += [hp.check_param(self.task, "model_size", v, "model_size", "yolov5")
                    for v in getattr(d, "values", [])]
        return list(dict.fromkeys(out)) or [hp.PARAMS["model_size"].default]

    @property
    def validation_fraction(self) -> float:
        if self.spec.validation_data_size is not None:
            return self.spec.validation_data_size
        return self.training_parameters.get("split_ratio") or 0.2

    def secrets(self) -> list[str]:
        """Values under ``visionsweep.storage_options`` that look like credentials (keys, tokens, SAS,
        passwords, connection strings; nested ones too): never written to the run folder or printed."""
        out = []
        for opts in self.spec.visionsweep.storage_options.values():
            for k, v in walk_items(opts):
                if SECRET_KEY.search(str(k)) and isinstance(v, (str, list)):
                    out += secret_values(v)
        return [s for s in out if s != MASK]

    def redacted_text(self) -> str:
        """The job file as submitted, with credentials as ``***``: still valid YAML (a masked value is the
        quoted scalar ``'***'``), so a run folder's ``job.yml`` parses again."""
        text = self.text
        spans = secret_spans(yaml.compose(text), ())
        for start, end in sorted(spans, reverse=True):
            while end > start and text[end - 1] in " \t\r\n":
                end -= 1
            text = text[:start] + f"'{MASK}'" + text[end:]
        return redact(text, self.secrets())

    def resolved(self) -> dict[str, Any]:
        """The job as it will run: defaults filled in, limits clamped, v2 key names; credentials as ``***``."""
        d = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        ext = d.get("visionsweep", {})
        if "storage_options" in ext:
            ext["storage_options"] = mask_secret_keys(ext["storage_options"])
        d["primary_metric"] = self.primary_metric
        d["training_parameters"] = dict(self.training_parameters)
        d["training_parameters"]["advanced_settings"] = self.applying_advanced()
        if self.search_space is not None:
            d["search_space"] = [{k: v.model_dump(mode="json") for k, v in sub.items()} for sub in self.search_space]
        d["mode"] = self.mode
        return redact_strings(d, self.secrets())

    def applying_advanced(self) -> dict[str, Any]:
        """The §3.7 advanced settings that act on this job: ``apply_automl_train_augmentations`` for detection and
        segmentation only, ``apply_mosaic_for_yolo`` where a trial can train yolov5 (the resolved job shows no
        switch that does nothing here)."""
        out = self.advanced.model_dump()
        if not hp.advanced_applies("apply_automl_train_augmentations", self.task):
            out.pop("apply_automl_train_augmentations")
        if "yolov5" not in self.model_names():
            out.pop("apply_mosaic_for_yolo")
        return out

    def notes(self) -> list[str]:
        """What the user should know about how visionsweep reads this job (``validate`` and ``run`` print them)."""
        out = []
        if "compute" in self.spec.model_fields_set and self.spec.compute != "local":
            out.append(f"compute: {self.spec.compute!r} names the managed service's compute target; visionsweep "
                       "runs the trials on the Ray cluster instead (RAY_ADDRESS, else an embedded local Ray)")
        for key in ("training_data", "validation_data"):
            data = getattr(self.spec, key)
            if data is not None and data.mode is not None:
                out.append(f"{key}.mode: {data.mode!r} is the service's way to hand data to a trial; visionsweep reads "
                           "the images from their URLs, "
                           + ("streamed (advanced_settings.stream_image_files: true)"
                              if self.advanced.stream_image_files
                              else "downloaded to the node cache first (advanced_settings.stream_image_files: false)"))
        if not self.spec.visionsweep.pretrained:
            out.append("visionsweep.pretrained: false: every model starts from random initialisation, not from its "
                       "published pretrained weights")
        if isinstance(self.policy, AshaSettings):
            out.append("sweep.early_termination.type: asha is a visionsweep extension, not a policy of the managed "
                       "service (whose job files take bandit, median_stopping or truncation_selection)")
        if "apply_mosaic_for_yolo" in self.advanced.model_fields_set and "yolov5" not in self.model_names():
            out.append(f"training_parameters.advanced_settings: apply_mosaic_for_yolo applies to yolov5 only (§3.7); "
                       f"this job trains {', '.join(self.model_names())}, so it has no effect")
        return out

    def warnings(self) -> list[str]:
        """Settings that are valid but cannot do what they are there for (``validate`` and ``run`` print them)."""
        out = []
        policy = self.policy
        if isinstance(policy, TruncationSelectionSettings) and policy.exclude_finished_jobs:
            c, pct = self.spec.limits.max_concurrent_trials, policy.truncation_percentage
            if math.floor(c * pct / 100) == 0:
                out.append(
                    f"sweep.early_termination: truncation_selection with exclude_finished_jobs: true ranks only "
                    f"the trials running at the same time, at most limits.max_concurrent_trials = {c}; it cancels "
                    f"floor({c} x {pct}%) = 0 of them, so it can never stop a trial (raise max_concurrent_trials "
                    f"to {math.ceil(100 / pct)} or more, or set exclude_finished_jobs: false)")
        for name, what in hp.ACCEPTED_NOT_APPLIED.items():
            where = ["training_parameters"] if name in self.training_parameters else []
            where += [f"search_space[{i}]" for i, sub in enumerate(self.search_space or []) if name in sub]
            if where:
                out.append(f"{' and '.join(f'{w}.{name}' for w in where)}: accepted, but {what}")
        return out

    @property
    def policy(self):
        return self.spec.sweep.early_termination if self.spec.sweep else None


def job_models(task: str, tp: dict[str, Any], space: list[dict[str, Any]] | None, max_trials: int) -> list[str]:
    """Every model_name a trial of the job can train: the sub-spaces' choices, the fixed one, the task
    default, or what AutoMode may pick (on either hardware) within the budget."""
    fixed = tp.get("model_name")
    if space is not None:
        out = [m for sub in space for m in (sub["model_name"].values if "model_name" in sub
                                            else [fixed or hp.DEFAULT_MODEL[task]])]
    elif fixed:
        out = [fixed]
    elif max_trials > 1:
        out = [m["model_name"] for gpu in (True, False) for m in automode.plan(task, max_trials, tp, gpu)["models"]]
    else:
        out = [hp.DEFAULT_MODEL[task]]
    return list(dict.fromkeys(out))
